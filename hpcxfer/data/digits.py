"""scikit-learn's handwritten digits as a class-folder tree: a small, real target set that
differs from Fashion-MNIST's clothes and needs no download (the 1,797 8 x 8 images ship
inside scikit-learn, `sklearn.datasets.load_digits`).

The tree is the `folders` layout (hpcxfer/data/folders.py): `train/<digit>/*.png` and
`val/<digit>/*.png`, the last `VAL_PER_CLASS` images of each digit in the data set's order
for validation and the rest (124 to 133 a digit) for training. It is written into a
temporary folder beside the destination and renamed into place, so a tree is whole or
absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hpcxfer.errors import ConfigError
from hpcxfer.fileio import fsync_dir

VAL_PER_CLASS = 50


def write_digits(dest: Path, val_per_class: int = VAL_PER_CLASS) -> int:
    """Write the digits tree at `dest` (which must not exist); returns the images written."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(None, "dissimilar", "needs scikit-learn for its target images",
                          "pip install 'hpcxfer[examples]'") from None
    import numpy as np
    from PIL import Image

    digits = load_digits()
    images = np.clip(digits.images * (255 / 16), 0, 255).round().astype(np.uint8)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for c in range(10):
            idx = np.flatnonzero(digits.target == c)
            for part, chosen in (("train", idx[:-val_per_class]), ("val", idx[-val_per_class:])):
                folder = tmp / part / str(c)
                folder.mkdir(parents=True)
                for i in chosen:
                    Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
        os.rename(tmp, dest)  # refuses a `dest` that appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return len(images)


def prepare(folder: Path) -> str:
    """The digits tree at `folder` for `hpcxfer init dissimilar`, kept if there already; a
    line saying which."""
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return f"kept {folder} (prepared before)"
    return f"wrote {write_digits(folder)} images of scikit-learn's digits under {folder}"
