"""Fashion-MNIST from its four IDX files: Debian's dataset-fashion-mnist, a folder the
user names, or torchvision's downloader into a cache folder, in that order."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch

from hpcxfer.data.base import Dataset, ImageSet
from hpcxfer.errors import DataError
from hpcxfer.layout import cache_root

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}


def cache_dir() -> Path:
    return cache_root() / "fashion-mnist"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        for cand in (folder / name, folder / "FashionMNIST" / "raw" / name, folder / "raw" / name):
            if cand.is_file():
                return cand
    return None


def _complete(folder: Path) -> dict[str, Path] | None:
    found = {k: _find(folder, stem) for k, stem in FILES.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def locate(path: str | None) -> dict[str, Path]:
    """The four files; an explicit path that lacks them is an error, never skipped."""
    if path:
        found = _complete(Path(path))
        if not found:
            raise DataError(None, "data.path", f"{path}: no Fashion-MNIST IDX files "
                            f"({', '.join(FILES.values())}, optionally .gz)")
        return found
    for folder in (DEBIAN_DIR, cache_dir()):
        found = _complete(folder)
        if found:
            return found
    return _download(cache_dir())


def _download(folder: Path) -> dict[str, Path]:
    from torchvision.datasets import FashionMNIST

    log.info("Fashion-MNIST not installed; downloading into %s", folder)
    try:
        FashionMNIST(str(folder), train=True, download=True)
        FashionMNIST(str(folder), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure is the same advice
        raise DataError(None, "data", f"Fashion-MNIST not found in {DEBIAN_DIR} or {folder} and the "
                        f"download failed ({e})", hint="apt-get install dataset-fashion-mnist, or set data.path") from None
    found = _complete(folder)
    if not found:
        raise DataError(None, "data", f"download into {folder} did not produce the IDX files")
    return found


def read_idx(path: Path) -> np.ndarray:
    """An IDX file, from a decoded .npy copy in the cache folder when one is there.

    Decompressing the 26 MB of gzip costs every task of a study about a second of
    start-up; the cached copy loads in milliseconds. Its name carries the source's size and
    mtime, so a changed source is decoded afresh. An unwritable cache is only slower.
    """
    stat = path.stat()
    cached = cache_dir() / "decoded" / f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    try:
        return np.load(cached, mmap_mode="r")
    except (OSError, ValueError):
        pass
    array = _read_idx(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, cached)
    except OSError as e:
        log.debug("cannot cache %s (%s)", cached, e)
    return array


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic with dtype and rank, then the dimensions)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(None, "data", f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(None, "data", f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise DataError(None, "data", f"{path}: truncated ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def _image_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, 28, 28] uint8

    def load(indices: np.ndarray) -> torch.Tensor:
        return tensor[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    return ImageSet(labels=labels.astype(np.int64), load=load)


def open_fashion_mnist(path: str | None = None) -> Dataset:
    files = locate(path)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for part in ("train", "val"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise DataError(None, "data", f"{files[part + '_images']}: image and label counts differ")
    return Dataset(
        name="fashion-mnist", num_classes=10, channels=1, image_size=28,
        mean=(0.2860,), std=(0.3530,),
        train=_image_set(arrays["train_images"], arrays["train_labels"]),
        val=_image_set(arrays["val_images"], arrays["val_labels"]),
        location=str(files["train_images"].parent),
    )
