"""Where the images come from: data sets by name, class splits and target subsets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpcxfer.data.base import Dataset, ImageSet
from hpcxfer.data.splits import class_split, drawn_per_class, first_per_class, remap, task_subset

#: Data set name (the grid's data.dataset) -> opener(path, options) -> Dataset, where
#: options is the grid's `data` section as a dict (task.json's "data").
OPENERS: dict[str, Callable[[str | None, dict], Dataset]] = {}


def _fashion_mnist(path: str | None, options: dict) -> Dataset:
    from hpcxfer.data.fashion_mnist import open_fashion_mnist

    return open_fashion_mnist(path)


def _imagenet(path: str | None, options: dict) -> Dataset:
    from hpcxfer.data.imagenet import open_imagenet

    return open_imagenet(path, options)


def _folders(path: str | None, options: dict) -> Dataset:
    from hpcxfer.data.folders import open_folders

    return open_folders(path, options)


def _cifar(name: str) -> Callable[[str | None, dict], Dataset]:
    def opener(path: str | None, options: dict) -> Dataset:
        from hpcxfer.data.cifar import open_cifar

        return open_cifar(name, path)

    return opener


OPENERS.update({"fashion-mnist": _fashion_mnist, "imagenet": _imagenet, "folders": _folders,
                "cifar10": _cifar("cifar10"), "cifar100": _cifar("cifar100")})

#: Images whose headers `verify: sample` checks, drawn with a fixed seed from what the study reads.
SAMPLE = 2000


def open_dataset(name: str, path: str | None = None, options: dict | None = None) -> Dataset:
    return OPENERS[name](path, options or {})


__all__ = [
    "OPENERS",
    "Dataset",
    "ImageSet",
    "check_data",
    "class_split",
    "drawn_per_class",
    "first_per_class",
    "open_dataset",
    "remap",
    "task_subset",
]


def check_data(grid_source: str, data: Any, tasks: list, grid: Any = None) -> Dataset:
    """Before anything is submitted: the data set opens, every class the tasks read has
    enough training images for the largest size asked of it, and the image files the
    study reads are readable (data.verify: a sample of headers, every header, or a full
    decode). Only then is a freshly scanned file index written to its cache. With a
    separate source and target (`grid.paired`), the target has two classes or more.
    Returns the data set."""
    from hpcxfer.errors import DataError

    paired = bool(grid is not None and grid.paired)
    options = data.model_dump() if hasattr(data, "model_dump") else dict(data)
    stages = {t.stage for t in tasks}
    where = "data" if not paired else ("source" if stages == {"pretrain"} else "target")
    try:
        ds = open_dataset(options["dataset"], options.get("path"), {**options, "save_index": False})
    except DataError as e:
        raise DataError(grid_source, where if e.field in (None, "data") else e.field, e.message, e.hint) from None
    if paired and "finetune" in stages and ds.num_classes < 2:
        raise DataError(grid_source, "target", f"{ds.num_classes} class in the target's training set; "
                        "fine-tuning needs two or more")
    used_train: set[int] = set()
    counts = np.bincount(ds.train.labels, minlength=ds.num_classes)
    for split, stage, size in sorted({(t.split, t.stage, str(t.examples_per_class)) for t in tasks}):
        classes = task_subset(ds.train.labels, ds.num_classes, stage=stage, split=split, per_class="full",
                              paired=paired)[0]
        field = "finetune.examples_per_class" if stage == "finetune" else "pretrain.examples_per_class"
        if size != "full":
            short = [c for c in classes if counts[c] < int(size)]
            if short:
                c = short[0]
                at = f"split {split}, " if not paired else ""
                raise DataError(grid_source, field, f"{ds.describe_class(c)}: {counts[c]} training images, fewer "
                                f"than the {size} per class asked ({at}{len(short)} classes short)")
        used_train.update(task_subset(ds.train.labels, ds.num_classes, stage=stage, split=split,
                                      per_class=size if size == "full" else int(size), paired=paired)[1].tolist())
    mode = options.get("verify", "sample")
    if mode != "none" and ds.train.path is not None:
        try:
            verify(ds, sorted(used_train), mode)
        except DataError as e:
            raise DataError(grid_source, where, e.message, e.hint) from None
    if ds.save_index is not None:
        ds.save_index()
    return ds


def verify(ds: Dataset, train_indices: list[int], mode: str) -> None:
    """Check the image files the study reads: their headers (a sample, or all) or a decode."""
    from hpcxfer.data.folders import check_header, decode, for_each

    picked = []
    for part, indices in ((ds.train, np.asarray(train_indices, dtype=np.int64)),
                          (ds.val, np.arange(len(ds.val.labels)))):
        if mode == "sample" and len(indices) > SAMPLE:
            # the first image of every class, and a fixed sample of the rest
            firsts = np.unique(part.labels[indices], return_index=True)[1]
            rest = np.random.RandomState(0).choice(len(indices), SAMPLE, replace=False)
            indices = indices[np.union1d(firsts, rest)]
        picked += [part.path(int(i)) for i in indices]
    if mode == "decode":
        for_each(lambda p: decode(p, ds.image_size), picked)
    else:
        for_each(check_header, picked)
