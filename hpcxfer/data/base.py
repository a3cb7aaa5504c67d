"""What a data set is to the worker: two labelled image sets in a canonical order, and how
its images are to be augmented and viewed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: Training augmentations the worker knows (hpcxfer/worker/augment.py):
#: pad-crop-flip: small images, a random translation of a few pixels and a flip;
#: resized-crop-flip: ImageNet's random resized crop to `crop` pixels and a flip.
AUGMENTS = ("pad-crop-flip", "resized-crop-flip")


@dataclass
class ImageSet:
    """One part (train or val) of a data set, in its canonical order.

    labels: the original class index of each image.
    load:   indices -> uint8 tensor [N, C, H, W] of decoded images.
    path:   index -> the image's file, for sets read from image files (else None).
    size:   the stored size S of a set decoded from files (short side to S, centre
            square; `hpcxfer.data.folders.decode`), else None.
    """

    labels: np.ndarray
    load: Callable[[np.ndarray], torch.Tensor]
    path: Callable[[int], str] | None = None
    size: int | None = None


@dataclass
class Dataset:
    """A labelled image set split into train and val.

    augment: how training batches are augmented (AUGMENTS); crop: the model's input size
    (training crops and the evaluation centre crop), None for the whole stored image.
    classes / class_dirs: class names and training folders, for messages that name a path.
    save_index: writes a freshly scanned file index to its cache (None: nothing to write).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: ImageSet
    val: ImageSet
    location: str
    augment: str = "pad-crop-flip"
    crop: int | None = None
    classes: list[str] | None = None
    class_dirs: list[str] | None = None
    save_index: Callable[[], None] | None = None

    def describe_class(self, c: int) -> str:
        """A class as a user finds it: its training folder, or its index."""
        if self.class_dirs:
            return self.class_dirs[c]
        return f"{self.location}: class {c}"
