"""Where a task's batches come from: decoded uint8 images in memory, or streamed.

Most tasks of a study are small: their images are decoded once and kept as one uint8
tensor (on the GPU when there is one), and a batch is an index into it. A set whose decoded
size exceeds `runtime.data_memory_gb` (full ImageNet source half: about 250 GB at 256 px)
is streamed instead: a DataLoader whose worker processes each decode one whole batch with
`ImageSet.load`. Both take the batch order from the caller (a seeded generator in the
loop) and can start at any step, so a resumed task sees exactly the batches it would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from hpcxfer.data.base import ImageSet

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images [B, C, H, W], int64 labels [B]


def _spans(order: torch.Tensor, batch_size: int, start_step: int) -> list[torch.Tensor]:
    return [order[i:i + batch_size] for i in range(start_step * batch_size, len(order), batch_size)]


class InMemory:
    """Every image decoded once, on `device`."""

    kind = "memory"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: torch.Tensor, batch_size: int, start_step: int = 0) -> Iterator[Batch]:
        device = self.images.device
        for span in _spans(order, batch_size, start_step):
            idx = span.to(device, non_blocking=True)
            yield self.images[idx], self.labels[idx]


class _Decode(torch.utils.data.Dataset):
    """Item i is the whole i-th batch, decoded in a worker process by one `load` call."""

    def __init__(self, images: ImageSet, indices: np.ndarray, labels: torch.Tensor, spans: list[torch.Tensor]):
        self.images, self.indices, self.labels, self.spans = images, indices, labels, spans

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> Batch:
        pos = self.spans[i].numpy()
        return self.images.load(self.indices[pos]), self.labels[pos]


class Streamed:
    """Images decoded batch by batch in `workers` processes, then moved to `device`."""

    kind = "stream"

    def __init__(self, images: ImageSet, indices: np.ndarray, labels: torch.Tensor,
                 device: torch.device, workers: int):
        self.images, self.indices, self.labels = images, indices, labels.cpu()
        self.device, self.workers = device, workers

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: torch.Tensor, batch_size: int, start_step: int = 0) -> Iterator[Batch]:
        spans = _spans(order.cpu(), batch_size, start_step)
        loader = torch.utils.data.DataLoader(
            _Decode(self.images, self.indices, self.labels, spans), batch_size=None, shuffle=False,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            # fork: the data set's `load` may be a closure, which spawn cannot pickle
            multiprocessing_context="fork" if self.workers else None,
            prefetch_factor=4 if self.workers else None,
            # its own generator: the loader draws worker seeds, which must not come from
            # torch's global one (dropout) or the streamed path would train differently
            generator=torch.Generator())
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def open_feed(images: ImageSet, indices: np.ndarray, labels: np.ndarray, device: torch.device,
              budget_bytes: float, workers: int) -> InMemory | Streamed:
    """In memory when the decoded images fit in `budget_bytes`, streamed otherwise."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(indices) == 0:
        return InMemory(torch.empty(0, dtype=torch.uint8, device=device), y.to(device))
    first = images.load(indices[:1])
    size = first.numel() * first.element_size() * len(indices)
    if size <= budget_bytes:
        return InMemory(images.load(indices).to(device), y.to(device))
    log.info("streaming %d images (%.1f GB decoded > data_memory_gb)", len(indices), size / 1e9)
    return Streamed(images, np.asarray(indices), y, device, workers)
