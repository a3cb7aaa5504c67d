"""Yosinski's class splits and the nested first-x target subsets (docs/design.md §1)."""

from __future__ import annotations

import numpy as np

from hpcxfer.errors import DataError


def class_split(num_classes: int, split: int) -> tuple[list[int], list[int]]:
    """(source, target) class indices of split `split`, both sorted ascending.

    Exactly Yosinski's recipe: numpy.random.seed(split); numpy.random.choice(
    numpy.arange(C), C // 2, replace=False). A private RandomState seeded the same way
    draws the same numbers without touching numpy's global state.
    """
    rng = np.random.RandomState(split)
    source = sorted(int(c) for c in rng.choice(np.arange(num_classes), num_classes // 2, replace=False))
    chosen = set(source)
    target = [c for c in range(num_classes) if c not in chosen]
    return source, target


def first_per_class(labels: np.ndarray, classes: list[int], per_class: int | str,
                    what: str = "training set") -> np.ndarray:
    """Indices of the first `per_class` examples of each class, in the canonical order.

    Smaller subsets are nested in larger ones and identical across splits and protocols.
    """
    labels = np.asarray(labels)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class != "full":
            if len(idx) < per_class:
                raise DataError(None, "examples_per_class",
                                f"class {c} has {len(idx)} images in the {what}, fewer than {per_class}")
            idx = idx[:per_class]
        elif len(idx) == 0:
            raise DataError(None, "data", f"class {c} has no images in the {what}")
        picked.append(idx)
    return np.sort(np.concatenate(picked))


def remap(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Original class indices -> 0..len(classes)-1 in ascending order of the original index."""
    lut = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
    lut[np.asarray(sorted(classes))] = np.arange(len(classes))
    out = lut[np.asarray(labels)]
    if (out < 0).any():
        raise ValueError("labels outside the given classes")
    return out


def drawn_per_class(labels: np.ndarray, classes: list[int], per_class: int | str, replicate: int,
                    what: str = "training set") -> np.ndarray:
    """A target subset of a separate target set (docs/design.md §1): each class's images in
    the order of `numpy.random.RandomState(replicate).permutation`, drawn per class in
    ascending class order, and the first `per_class` of them. Smaller subsets are nested in
    larger ones; another replicate draws another subset; 'full' takes every image."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(replicate)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise DataError(None, "data", f"class {c} has no images in the {what}")
        idx = idx[rng.permutation(len(idx))]
        if per_class != "full":
            if len(idx) < per_class:
                raise DataError(None, "examples_per_class",
                                f"class {c} has {len(idx)} images in the {what}, fewer than {per_class}")
            idx = idx[:per_class]
        picked.append(idx)
    return np.sort(np.concatenate(picked))


def task_subset(labels: np.ndarray, num_classes: int, *, stage: str, split: int, per_class: int | str,
                paired: bool) -> tuple[list[int], np.ndarray]:
    """(classes, training indices) of a task: a split's half and its first images in the
    paper's setting; with a separate source and target, every class of the task's data
    set, the source's first images for pre-training and the replicate's draw of the
    target for fine-tuning."""
    if not paired:
        source, target = class_split(num_classes, split)
        classes = source if stage == "pretrain" else target
        return classes, first_per_class(labels, classes, per_class)
    classes = list(range(num_classes))
    if stage == "pretrain":
        return classes, first_per_class(labels, classes, per_class)
    return classes, drawn_per_class(labels, classes, per_class, split)
