"""What a data set is to the worker: two labelled image sets in a canonical order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class ImageSet:
    """One part (train or val) of a data set, in its canonical order.

    labels: the original class index of each image.
    load:   indices -> uint8 tensor [N, C, H, W] of decoded images.
    """

    labels: np.ndarray
    load: Callable[[np.ndarray], torch.Tensor]


@dataclass
class Dataset:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: ImageSet
    val: ImageSet
    location: str
