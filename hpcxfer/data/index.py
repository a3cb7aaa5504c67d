"""The file index of a folder data set, built once per data root and cached.

Listing ImageNet's 1.28 million training files on a parallel file system takes minutes, and
every task of a study needs the same list. The index (class folders, and the sorted image
file names in each) is written once to a cache folder as gzipped JSON and reused while it
is current: its stamp is the modification time of each listed folder, which changes when a
file is added, removed or renamed in it. Checking the stamp costs one listing of the top
folder and a stat per class folder, not a listing of every file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hpcxfer.errors import DataError
from hpcxfer.fileio import atomic_write_bytes
from hpcxfer.layout import cache_root

log = logging.getLogger(__name__)

FORMAT = 1
#: What torchvision's ImageFolder reads; other files in class folders are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def default_cache() -> Path:
    return cache_root() / "index"


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Listing:
    """One folder: its class folders (sorted) and the sorted image names in each.

    A flat folder (no class folders) is one entry with the name "".
    """

    folder: str
    classes: list[str]
    files: list[list[str]]
    stamp: dict | None = None  # set when freshly scanned: not yet in the cache


def _subfolders(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        raise DataError(None, "data.path", f"{folder}: no such folder") from None
    except OSError as e:
        raise DataError(None, "data.path", f"{folder}: cannot list ({e.strerror})") from None


def _images(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if is_image(e.name))
    except OSError as e:
        raise DataError(None, "data.path", f"{folder}: cannot list ({e.strerror})") from None


def scan(folder: Path, flat: bool = False) -> Listing:
    """List a class-folder tree (or, flat, one folder of images). The slow part."""
    if flat:
        if not folder.is_dir():
            raise DataError(None, "data.val_dir", f"{folder}: no such folder")
        return Listing(str(folder), [""], [_images(folder)])
    classes = _subfolders(folder)
    if not classes:
        raise DataError(None, "data.path", f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    return Listing(str(folder), classes, [_images(folder / c) for c in classes])


def stamp(folder: Path, classes: list[str]) -> dict[str, int]:
    """Modification times (ns) of the folder and of each class folder in it."""
    out = {".": folder.stat().st_mtime_ns}
    for c in classes:
        if c:
            try:
                out[c] = (folder / c).stat().st_mtime_ns
            except FileNotFoundError:
                out[c] = -1
    return out


def cache_file(cache: Path, folder: Path, flat: bool) -> Path:
    key = hashlib.sha256(f"{FORMAT}:{folder.resolve()}:{flat}".encode()).hexdigest()[:16]
    return cache / f"{folder.parent.name}-{folder.name}-{key}.json.gz"


def _read(path: Path) -> dict | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError) as e:
        log.warning("ignoring unreadable index %s (%s); rebuilding", path, e)
        return None


def listing(folder: str | Path, *, flat: bool = False, cache: str | Path | None = None,
            save: bool = True) -> Listing:
    """The listing of `folder`, from the cache when it is current, else scanned (and cached
    when `save`). A cache that cannot be written only costs the next task a rescan."""
    folder = Path(folder).absolute()
    cache_dir = Path(cache) if cache else default_cache()
    path = cache_file(cache_dir, folder, flat)
    data = _read(path)
    if data is not None and data.get("format") == FORMAT and data.get("folder") == str(folder):
        current_classes = [""] if flat else _subfolders(folder)
        if current_classes == data["classes"] and stamp(folder, current_classes) == data["stamp"]:
            log.info("file index of %s: %s (cached)", folder, path)
            return Listing(str(folder), data["classes"], data["files"])
        log.info("file index of %s is stale; rescanning", folder)
    # Stamped before the scan: a change during the scan makes the record stale, not wrong.
    before = stamp(folder, [""] if flat else _subfolders(folder)) if folder.is_dir() else {}
    found = scan(folder, flat)
    found.stamp = before
    if save:
        save_listing(found, cache_dir, flat)
    return found


def save_listing(found: Listing, cache: str | Path | None = None, flat: bool = False) -> Path | None:
    """Write a listing to the cache; a cache that cannot be written is only a warning."""
    folder = Path(found.folder)
    path = cache_file(Path(cache) if cache else default_cache(), folder, flat)
    if not found.stamp:
        return None  # came from the cache, or the folder vanished
    record = {"format": FORMAT, "folder": str(folder), "classes": found.classes, "files": found.files,
              "stamp": found.stamp}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, gzip.compress(json.dumps(record).encode(), compresslevel=5))
    except OSError as e:
        log.warning("could not cache the file index of %s in %s (%s)", folder, path, e)
        return None
    return path
