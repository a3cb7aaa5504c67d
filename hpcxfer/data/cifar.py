"""CIFAR-10 and CIFAR-100 in torchvision's format (the "python version" of the archives).

`cifar-10-batches-py/` holds data_batch_1..5 and test_batch, `cifar-100-python/` holds
train and test: pickled dicts with b"data" (N x 3072 uint8, channel-major 32 x 32) and
b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100). `data.path` is that folder or its
parent; without it the cache folder is searched, then torchvision downloads there. The
files are unpickled with only numpy's array constructors allowed, so a doctored file cannot
run code. File order is the canonical order; the test batch is the validation set.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from hpcxfer.data.base import Dataset, ImageSet
from hpcxfer.data.index import default_cache
from hpcxfer.errors import DataError

log = logging.getLogger(__name__)

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise DataError(None, "data.path", f"{path}: not a CIFAR batch of torchvision's format ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(None, "data.path", f"{path}: expected N x 3072 images and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def locate(name: str, path: str | None) -> Path:
    folder_name = LAYOUT[name][0]
    candidates = [Path(path), Path(path) / folder_name] if path else [default_cache().parent / name / folder_name]
    for cand in candidates:
        if (cand / LAYOUT[name][1][0]).is_file():
            return cand
    if path:
        raise DataError(None, "data.path", f"{path}: no {folder_name}/ with {LAYOUT[name][1][0]} (torchvision's "
                        "CIFAR format)")
    return _download(name, default_cache().parent / name)


def _download(name: str, root: Path) -> Path:
    from torchvision.datasets import CIFAR10, CIFAR100

    log.info("%s not found; downloading into %s", name, root)
    try:
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure is the same advice
        raise DataError(None, "data.path", f"{name} not found in {root} and the download failed ({e})",
                        hint="set data.path to a folder with torchvision's CIFAR files") from None
    return root / LAYOUT[name][0]


def _image_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    tensor = torch.from_numpy(images)

    def load(indices: np.ndarray) -> torch.Tensor:
        return tensor[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    return ImageSet(labels=labels, load=load)


def open_cifar(name: str, path: str | None) -> Dataset:
    folder = locate(name, path)
    _, train_files, val_files, key, classes = LAYOUT[name]
    parts = {}
    for part, files in (("train", train_files), ("val", val_files)):
        batches = [read_batch(folder / f, key) for f in files]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(None, "data.path", f"{folder}: labels outside 0..{classes - 1}")
        parts[part] = _image_set(images, labels)
    mean, std = MEAN_STD[name]
    return Dataset(name=name, num_classes=classes, channels=3, image_size=32, mean=mean, std=std,
                   train=parts["train"], val=parts["val"], location=str(folder))
