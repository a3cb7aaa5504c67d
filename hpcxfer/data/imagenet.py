"""ILSVRC2012 (ImageNet-1k) from its image files.

Training images in class folders, `train/<wnid>/*.JPEG`; classes are the sorted wnids, so
class index 0..999 is the standard order (n01440764 = 0, ..., n15075141 = 999).
Validation images in one of three layouts (`data.val_layout`, `auto` picks):

- folders: `val/<wnid>/*.JPEG` (what most preparation scripts produce).
- devkit: flat `val/ILSVRC2012_val_00000001.JPEG ...` with the devkit's
  `ILSVRC2012_validation_ground_truth.txt` (`data.val_labels`): one line per image, in
  sorted file-name order, holding the image's 1-based ILSVRC2012_ID. The IDs are *not*
  sorted-wnid order (ID 1 is n02119789, kit fox): the ID -> wnid table comes from the
  devkit's `data/meta.mat` (`data.class_ids`; read with scipy) or from a text file of
  `ILSVRC2012_ID wnid` lines, or of one wnid per line in ID order.
- kaggle: flat `val/<ImageId>.JPEG` with `LOC_val_solution.csv` (`data.val_labels`):
  header `ImageId,PredictionString`, the first token of PredictionString is the wnid.

Relative `val_labels` and `class_ids` are relative to `data.path`.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from hpcxfer.data.base import Dataset
from hpcxfer.data.folders import open_folders, resolve
from hpcxfer.errors import DataError

WNID = re.compile(r"^n\d{8}$")


def read_class_ids(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's meta.mat or a text file."""
    if not path.is_file():
        raise DataError(None, "data.class_ids", f"{path}: no such file")
    if path.suffix == ".mat":
        return _from_meta_mat(path)
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(None, "data.class_ids", f"{path}: cannot read ({e})") from None
    if lines and all(len(t) >= 2 and t[0].isdigit() for t in lines):
        ids = {int(t[0]): t[1] for t in lines}
    elif lines and all(WNID.match(t[0]) for t in lines):
        wnids = [t[0] for t in lines]
        if len(wnids) > 2 and wnids == sorted(wnids):
            raise DataError(None, "data.class_ids", f"{path}: wnids in sorted order are not ILSVRC2012_ID order "
                            "(this looks like LOC_synset_mapping.txt or a class list)",
                            hint="give the devkit's data/meta.mat or 'ILSVRC2012_ID wnid' lines")
        ids = {i + 1: w for i, w in enumerate(wnids)}
    else:
        raise DataError(None, "data.class_ids", f"{path}: expected lines 'ILSVRC2012_ID wnid' or one wnid per "
                        "line in ILSVRC2012_ID order")
    bad = [w for w in ids.values() if not WNID.match(w)]
    if bad:
        raise DataError(None, "data.class_ids", f"{path}: {bad[0]!r} is not a wnid (n + 8 digits)")
    return ids


def _from_meta_mat(path: Path) -> dict[int, str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(None, "data.class_ids", f"{path}: reading meta.mat needs scipy",
                        hint="pip install scipy, or give a text file of 'ILSVRC2012_ID wnid' lines") from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        # The 1000 classes are the leaves of the devkit's synset tree (num_children == 0).
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DataError(None, "data.class_ids", f"{path}: not the devkit's meta.mat ({e})") from None


def devkit_labels(names: list[str], truth: Path, ids: dict[int, str], class_index: dict[str, int]) -> np.ndarray:
    try:
        lines = truth.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(None, "data.val_labels", f"{truth}: cannot read ({e})") from None
    if len(lines) != len(names):
        raise DataError(None, "data.val_labels", f"{truth}: {len(lines)} labels for {len(names)} validation "
                        "images (one line per image, in sorted file-name order)")
    labels = np.empty(len(names), dtype=np.int64)
    for i, token in enumerate(lines):
        if not token.isdigit() or int(token) not in ids:
            raise DataError(None, "data.val_labels", f"{truth}: line {i + 1}: {token!r} is not an ILSVRC2012_ID "
                            "of data.class_ids")
        wnid = ids[int(token)]
        if wnid not in class_index:
            raise DataError(None, "data.val_labels", f"{truth}: line {i + 1} ({names[i]}): class {wnid} has no "
                            "training folder")
        labels[i] = class_index[wnid]
    return labels


def kaggle_labels(names: list[str], solution: Path, class_index: dict[str, int]) -> np.ndarray:
    try:
        with open(solution, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(None, "data.val_labels", f"{solution}: cannot read ({e})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise DataError(None, "data.val_labels", f"{solution}: expected the header ImageId,PredictionString")
    wnid_of = {}
    for n, row in enumerate(rows[1:], start=2):
        tokens = row[1].split() if len(row) > 1 else []
        if not tokens or not WNID.match(tokens[0]):
            raise DataError(None, "data.val_labels", f"{solution}: line {n}: no wnid in PredictionString")
        wnid_of[row[0].strip()] = tokens[0]
    labels = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        stem = os.path.splitext(name)[0]
        if stem not in wnid_of:
            raise DataError(None, "data.val_labels", f"{solution}: no row for validation image {name}")
        wnid = wnid_of.pop(stem)
        if wnid not in class_index:
            raise DataError(None, "data.val_labels", f"{solution}: {stem}: class {wnid} has no training folder")
        labels[i] = class_index[wnid]
    if wnid_of:
        first = min(wnid_of)
        raise DataError(None, "data.val_dir", f"{first}: listed in {solution} but missing from the validation "
                        f"folder ({len(wnid_of)} images missing)")
    return labels


def open_imagenet(path: str | None, options: dict) -> Dataset:
    def flat_val(names: list[str], layout: str, class_index: dict[str, int]) -> np.ndarray:
        given = options.get("val_labels")
        if not given:
            raise DataError(None, "data.val_labels", "the validation folder has no class folders: name the "
                            "devkit's ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv")
        labels_file = resolve(path, given)
        if not labels_file.is_file():
            raise DataError(None, "data.val_labels", f"{labels_file}: no such file")
        if layout == "kaggle" or (layout == "flat" and labels_file.suffix == ".csv"):
            return kaggle_labels(names, labels_file, class_index)
        ids_given = options.get("class_ids")
        if not ids_given:
            raise DataError(None, "data.class_ids", f"{labels_file} holds ILSVRC2012_IDs, which are not sorted-"
                            "wnid order: name the devkit's meta.mat or an 'ILSVRC2012_ID wnid' file")
        return devkit_labels(names, labels_file, read_class_ids(resolve(path, ids_given)), class_index)

    return open_folders(path, options, name="imagenet", flat_val=flat_val)
