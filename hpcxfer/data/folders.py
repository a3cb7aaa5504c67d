"""Image files in class folders: `path/train/<class>/<image>` and `path/val/<class>/<image>`.

Classes are the training folder's subfolders in sorted order (class index 0, 1, ...); the
canonical order of images is class by class, sorted file names within a class, so the first
x images of a class are the same on every machine. The file listing comes from the cached
index (index.py). Images are decoded on demand by `ImageSet.load` into uint8
[N, 3, S, S] at the stored size S (`image_size`): short side resized to S, centre S x S
square, which is what the worker keeps in memory and augments on the device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from hpcxfer.data.base import Dataset, ImageSet
from hpcxfer.data.index import Listing, listing, save_listing
from hpcxfer.errors import DataError
from hpcxfer.grid.task import CROP, IMAGE_SIZE
from hpcxfer.procs import usable_cpus

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode(path: str, size: int) -> np.ndarray:
    """One image file -> uint8 [3, size, size]: RGB, short side resized to `size` (bilinear,
    antialiased, as torchvision's Resize on PIL images), centre square crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale >= size
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad or truncated files
        raise DataError(None, "data", f"{path}: cannot decode image ({e})") from None


#: How a whole file ends: JPEG's end-of-image marker, PNG's IEND chunk (and its CRC).
_TRAILERS = {b"\xff\xd8": b"\xff\xd9", b"\x89P": b"IEND\xaeB`\x82"}
#: A JPEG may carry a few bytes after its end marker (padding, camera junk).
TAIL = 1024


def complete(path: str) -> bool:
    """Whether a JPEG or PNG file ends as a whole one does: its end marker within the last
    TAIL bytes. Reads 2 bytes and the tail; other formats count as complete."""
    with open(path, "rb") as f:
        end = _TRAILERS.get(f.read(2))
        if end is None:
            return True
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL))
        return end in f.read()


def check_header(path: str) -> None:
    """Open the file and parse its header (format and size) without decoding the pixels,
    and look at its end: a JPEG or PNG cut short (a copy that stopped, a full disk) still
    has a good header. A file without its end marker is decoded in full to decide, so only
    a file that cannot be decoded is refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size[0] < 1 or im.size[1] < 1:
                raise ValueError("empty image")
            if not complete(path):
                im.load()  # raises "image file is truncated" unless it really is whole
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(None, "data", f"{path}: unreadable image ({e})") from None


def for_each(fn: Callable[[str], object], paths: list[str]) -> list:
    """fn over paths on a thread pool (PIL decodes without holding the GIL); first error wins."""
    if len(paths) < 8:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, usable_cpus())) as pool:
        return list(pool.map(fn, paths))


def file_set(files: list[str], labels: np.ndarray, size: int) -> ImageSet:
    """An ImageSet over absolute file paths decoded at `size`."""

    def load(indices: np.ndarray) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), 3, size, size), dtype=np.uint8)

        def one(j: int) -> None:
            out[j] = decode(files[idx[j]], size)

        if len(idx):
            with ThreadPoolExecutor(max_workers=min(32, usable_cpus())) as pool:
                list(pool.map(one, range(len(idx))))
        return torch.from_numpy(out)

    return ImageSet(labels=np.asarray(labels, dtype=np.int64), load=load, path=lambda i: files[int(i)], size=size)


def flatten(found: Listing, class_index: dict[str, int], part: str) -> tuple[list[str], np.ndarray]:
    """Absolute paths and class indices of a class-folder listing; every folder must be a
    known class and hold at least one image."""
    files, labels = [], []
    for name, names in zip(found.classes, found.files):
        folder = os.path.join(found.folder, name)
        if name not in class_index:
            raise DataError(None, "data.val_dir", f"{folder}: {part} class folder {name!r} is not a class of "
                            f"the training set")
        if not names:
            raise DataError(None, "data", f"{folder}: empty class (no image files in the {part} set)")
        files += [os.path.join(folder, n) for n in names]
        labels += [class_index[name]] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


def resolve(base: str | None, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() or base is None else Path(base) / p


def open_folders(path: str | None, options: dict, *, name: str = "folders",
                 flat_val: Callable[[list[str], str, dict[str, int]], np.ndarray] | None = None) -> Dataset:
    """A class-folder data set. `flat_val(file names, layout, class index)` labels every
    image of a flat validation folder (ImageNet's devkit and Kaggle layouts) or raises;
    without it a flat validation folder is an error."""
    if not path:
        raise DataError(None, "data.path", f"the {name} data set needs data.path (the folder holding "
                        f"{options.get('train_dir', 'train')}/ and {options.get('val_dir', 'val')}/)")
    cache = options.get("index_cache")
    cache = str(resolve(path, cache)) if cache else None
    save = options.get("save_index", True)
    size = int(options.get("image_size", IMAGE_SIZE))
    train_dir = resolve(path, options.get("train_dir", "train"))
    val_dir = resolve(path, options.get("val_dir", "val"))

    train = listing(train_dir, cache=cache, save=save)
    class_index = {c: i for i, c in enumerate(train.classes)}
    train_files, train_labels = flatten(train, class_index, "training")

    layout = options.get("val_layout", "auto")
    if not val_dir.is_dir():
        raise DataError(None, "data.val_dir", f"{val_dir}: no such folder")
    if layout == "auto":
        has_classes = any(e.is_dir() for e in os.scandir(val_dir))
        layout = "folders" if has_classes else "flat"
    if layout == "folders":
        val = listing(val_dir, cache=cache, save=save)
        val_files, val_labels = flatten(val, class_index, "validation")
    else:
        if flat_val is None:
            raise DataError(None, "data.val_dir", f"{val_dir}: no class folders; the {name} data set reads "
                            "validation images from <val>/<class>/<image>")
        val = listing(val_dir, flat=True, cache=cache, save=save)
        names = val.files[0]
        val_labels = flat_val(names, layout, class_index)
        val_files = [os.path.join(val.folder, n) for n in names]
    missing = sorted(set(range(len(train.classes))) - set(np.unique(val_labels).tolist()))
    if missing:
        raise DataError(None, "data.val_dir", f"{val_dir}: no validation images of class "
                        f"{train.classes[missing[0]]!r} ({len(missing)} classes have none)")

    def save_index() -> None:
        for found, flat in ((train, False), (val, layout != "folders")):
            save_listing(found, cache, flat)

    return Dataset(
        name=name, num_classes=len(train.classes), channels=3, image_size=size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        train=file_set(train_files, train_labels, size), val=file_set(val_files, val_labels, size),
        location=str(train_dir.parent), augment="resized-crop-flip", crop=int(options.get("crop", CROP)),
        classes=list(train.classes), class_dirs=[str(train_dir / c) for c in train.classes],
        save_index=save_index,
    )
