"""Where a task's batches come from: decoded uint8 images in memory, or streamed.

Most tasks of a study are small: their images are decoded once and kept as one uint8
tensor (on the GPU when there is one), and a batch is an index into it. A set whose decoded
size exceeds `runtime.data_memory_gb` (full ImageNet source half: about 250 GB at 256 px)
is streamed instead: a DataLoader whose worker processes each decode one whole batch with
`ImageSet.load`. Both take the batch order from the caller (a seeded generator in the
loop) and can start at any step, so a resumed task sees exactly the batches it would have.

A streamed set of image files is decoded once per job, not once per epoch: its first pass
writes the decoded images to a cache file on node-local disk and later passes read them
through a memory map (`runtime.decode_cache`, hpcxfer/worker/decode_cache.py). On a GPU
the JPEGs are decoded in batches by nvJPEG, the loader workers reading the files and
decoding on the CPU only what nvJPEG refuses (`runtime.gpu_decode`, hpcxfer/data/nvjpeg.py).
A file that cannot be decoded stops the task with a DataError naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hpcxfer.data import nvjpeg
from hpcxfer.data.base import ImageSet
from hpcxfer.errors import DataError
from hpcxfer.grid.runtime import DEFAULTS, RuntimeSettings
from hpcxfer.worker import decode_cache

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


@dataclass
class StreamOptions:
    """The runtime section's say in streaming (RuntimeSpec in hpcxfer/grid/schema.py)."""

    decode_cache: str = DEFAULTS.decode_cache
    gpu_decode: bool = DEFAULTS.gpu_decode

    @classmethod
    def from_runtime(cls, runtime: RuntimeSettings) -> StreamOptions:
        return cls(runtime.decode_cache, runtime.gpu_decode)


@dataclass
class _Failed:
    """A batch a loader worker could not decode: the DataError's message, to raise here."""

    message: str


class _Batches(torch.utils.data.Dataset):
    """Item i is the whole i-th batch, made in a worker process: read from the cache, or
    decoded by one `load` call (and written to the cache being built), or, for nvJPEG,
    the files' bytes with the CPU-decoded exceptions."""

    def __init__(self, feed: Streamed, spans: list[torch.Tensor], mode: str):
        self.feed, self.spans, self.mode = feed, spans, mode

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int):
        feed, pos = self.feed, self.spans[i].numpy()
        try:
            if self.mode == "read":
                x = torch.from_numpy(feed.reader[pos])
            elif feed.assemble is not None:
                x = nvjpeg.prepare([feed.images.path(j) for j in feed.indices[pos]], feed.images.size)
            else:
                x = feed.images.load(feed.indices[pos])
                if self.mode == "build":
                    feed.builder.write(pos, x.numpy())
        except DataError as e:
            return _Failed(e.message)
        return i, x, feed.labels[pos]


class Streamed:
    """Images decoded batch by batch in `workers` processes, then moved to `device`; a set
    of image files is decoded once into a cache and read from it after (see the module)."""

    kind = "stream"

    def __init__(self, images: ImageSet, indices: np.ndarray, labels: torch.Tensor,
                 device: torch.device, workers: int, options: StreamOptions | None = None):
        self.images, self.indices, self.labels = images, indices, labels.cpu()
        self.device, self.workers = device, workers
        options = options or StreamOptions(decode_cache="off", gpu_decode=False)
        files = images.path is not None and images.size is not None
        self.assemble = (nvjpeg.Assemble(images.size, device)
                         if files and options.gpu_decode and nvjpeg.available(device) else None)
        self.cache: decode_cache.DecodeCache | None = None
        self.reader: np.ndarray | None = None
        self.builder: decode_cache.Builder | None = None
        self._reported = False
        folder, kept = decode_cache.folder_for(options.decode_cache) if files else (None, False)
        if folder is not None:
            shape = (3, images.size, images.size)
            decoder = nvjpeg.DECODER if self.assemble else "pil"
            key = decode_cache.cache_key((images.path(int(j)) for j in indices), shape, decoder)
            cache = decode_cache.DecodeCache(folder, key, len(indices), shape, kept)
            problem = cache.plan()
            if problem and kept:
                raise DataError(None, "runtime.decode_cache", problem,
                                hint="name a folder with room, use auto, or off to decode every pass")
            if problem:
                log.warning("no decode cache: %s; decoding every pass", problem)
            else:
                self.cache = cache

    def __len__(self) -> int:
        return len(self.labels)

    def _mode(self) -> str:
        """read (the cache is complete), build (this pass writes it) or decode."""
        if self.reader is None and self.cache is not None:
            self.reader = self.cache.open()
            if self.reader is not None:
                log.info("reading %d decoded images from %s", len(self), self.cache)
        if self.reader is not None:
            return "read"
        if self.builder is None and self.cache is not None:
            self.builder = self.cache.claim()
            if self.builder is not None:
                log.info("decoding %d images into %s (%s)", len(self), self.cache,
                         decode_cache.size_text(self.cache.nbytes))
        return "build" if self.builder is not None else "decode"

    def _load(self, spans: list[torch.Tensor], mode: str) -> Iterator[Batch]:
        # Reading the cache is a copy out of the page cache: on a CPU the training process
        # does it itself (no worker processes to start, no second copy through shared
        # memory); on a GPU the workers keep it off the step's critical path.
        workers = 0 if mode == "read" and self.device.type == "cpu" else self.workers
        loader = torch.utils.data.DataLoader(
            _Batches(self, spans, mode), batch_size=None, shuffle=False,
            num_workers=workers, pin_memory=self.device.type == "cuda",
            # fork: the data set's `load` may be a closure, which spawn cannot pickle
            multiprocessing_context="fork" if workers else None,
            prefetch_factor=4 if workers else None,
            # its own generator: the loader draws worker seeds, which must not come from
            # torch's global one (dropout) or the streamed path would train differently
            generator=torch.Generator())
        for item in loader:
            if isinstance(item, _Failed):
                raise DataError(None, "data", item.message)
            i, x, y = item
            if mode != "read" and self.assemble is not None:
                x = self.assemble(x)
                if mode == "build":
                    self.builder.write(spans[i].numpy(), x.cpu().numpy())
            if mode == "build":
                self.builder.mark(spans[i].numpy())
            yield x, y

    def batches(self, order: torch.Tensor, batch_size: int, start_step: int = 0) -> Iterator[Batch]:
        mode = self._mode()
        for x, y in self._load(_spans(order.cpu(), batch_size, start_step), mode):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if mode == "build":
            self._complete(batch_size)
        if self.assemble is not None and mode != "read" and not self._reported:
            log.info("%s", self.assemble.summary())
            self._reported = True

    def _complete(self, batch_size: int) -> None:
        """After a whole pass that built the cache: decode what it skipped (a pass resumed
        mid-epoch starts at its step), then make the cache whole and read from it."""
        missing = self.builder.missing()
        if len(missing):
            log.info("decoding the %d images this pass skipped into %s", len(missing), self.cache)
            for _ in self._load(_spans(torch.from_numpy(missing), batch_size, 0), "build"):
                pass
        builder, self.builder = self.builder, None
        if builder.finish():
            self.reader = self.cache.open()
            log.info("decode cache %s complete: later passes read it", self.cache)
        else:
            self.cache = None


def open_feed(images: ImageSet, indices: np.ndarray, labels: np.ndarray, device: torch.device,
              budget_bytes: float, workers: int, options: StreamOptions | None = None) -> InMemory | Streamed:
    """In memory when the decoded images fit in `budget_bytes`, streamed otherwise."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(indices) == 0:
        return InMemory(torch.empty(0, dtype=torch.uint8, device=device), y.to(device))
    first = images.load(indices[:1])
    size = first.numel() * first.element_size() * len(indices)
    if size <= budget_bytes:
        return InMemory(images.load(indices).to(device), y.to(device))
    log.info("streaming %d images (%.1f GB decoded > data_memory_gb)", len(indices), size / 1e9)
    return Streamed(images, np.asarray(indices), y, device, workers, options)
