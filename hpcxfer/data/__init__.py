"""Where the images come from: data sets by name, class splits and target subsets."""

from __future__ import annotations

from typing import Callable

from hpcxfer.data.base import Dataset, ImageSet
from hpcxfer.data.splits import class_split, first_per_class, remap

#: Data set name (the grid's data.dataset) -> opener(path) -> Dataset.
OPENERS: dict[str, Callable[[str | None], Dataset]] = {}


def _fashion_mnist(path: str | None) -> Dataset:
    from hpcxfer.data.fashion_mnist import open_fashion_mnist

    return open_fashion_mnist(path)


OPENERS["fashion-mnist"] = _fashion_mnist


def open_dataset(name: str, path: str | None = None) -> Dataset:
    return OPENERS[name](path)


__all__ = ["Dataset", "ImageSet", "OPENERS", "check_data", "class_split", "first_per_class", "open_dataset", "remap"]


def check_data(grid_source: str, dataset: str, path: str | None, tasks: list) -> None:
    """Before anything is submitted: the data set opens and every class of every split
    has enough training images for the largest size asked of it."""
    from hpcxfer.errors import DataError

    try:
        ds = open_dataset(dataset, path)
    except DataError as e:
        raise DataError(grid_source, e.field or "data", e.message, e.hint) from None
    for split, stage, size in sorted({(t.split, t.stage, str(t.examples_per_class)) for t in tasks}):
        source, target = class_split(ds.num_classes, split)
        classes = source if stage == "pretrain" else target
        try:
            first_per_class(ds.train.labels, classes, size if size == "full" else int(size))
        except DataError as e:
            field = "finetune.examples_per_class" if stage == "finetune" else "data"
            raise DataError(grid_source, field, f"{ds.location}: {e.message}") from None
