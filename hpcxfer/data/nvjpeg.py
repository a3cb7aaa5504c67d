"""JPEG files decoded in batches on the GPU (nvJPEG through torchvision), with a CPU fallback.

The streamed path's pace on a GPU node is set by JPEG decoding, not by the GPU: PIL decodes
a 500x375 JPEG to 256 px at a few hundred images a second per core, AlexNet trains at tens
of thousands. torchvision's `decode_jpeg(list, device="cuda")` hands a whole batch to
nvJPEG. The work splits in two:

- `Prepare` (in a loader worker process, CPU only): read each file, sniff it, and decode on
  the CPU (`hpcxfer.data.folders.decode`) what nvJPEG refuses: CMYK and YCCK JPEGs (four
  components), PNGs and other formats under a .JPEG name, and JPEGs without their end
  marker (truncated: nvJPEG may fill the missing part with grey where PIL raises).
- `Assemble` (in the training process): one batched nvJPEG call for the rest; a batch it
  refuses is retried image by image, and an image it still refuses is decoded on the CPU.
  Every image is then resized (short side to S, bilinear, antialiased, the same output
  size as the CPU path) and centre-cropped on the device; images of one size are resized
  together. `counts` says how many took which way, for the task's log.

The result is close to the CPU path's but not bit-identical: the CPU path decodes with
libjpeg-turbo at a reduced DCT scale (PIL's draft mode) and resizes with PIL's fixed-point
filter; this path decodes at full size and resizes with torch's antialiased bilinear
filter, and nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or
two. On the CPU (torchvision's libjpeg-turbo standing in for nvJPEG) the mean absolute
difference is under 2 levels at 256 px (tests/test_imagenet_scale.py). A decode cache built
this way is therefore keyed apart from one built by PIL (`DECODER`).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from hpcxfer.errors import DataError

log = logging.getLogger(__name__)

DECODER = "nvjpeg"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: What nvJPEG is given: three-component (YCbCr) and grayscale JPEGs.
TO_GPU = ("jpeg", "gray")


def sniff(data: bytes) -> str:
    """What a file's bytes are: "jpeg" (three components), "gray", "cmyk" (four: CMYK or
    YCCK), "truncated" (a JPEG without its end marker), "png" or "other"."""
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:2] != b"\xff\xd8":
        return "other"
    if b"\xff\xd9" not in data[-1024:]:
        return "truncated"
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return "other"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in SOF:
            if i + 10 > n:
                return "truncated"
            return {1: "gray", 3: "jpeg", 4: "cmyk"}.get(data[i + 9], "other")
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return "other"


def target_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to `size`, rounded as the CPU path does."""
    scale = size / min(width, height)
    return max(size, round(height * scale)), max(size, round(width * scale))


def resize_centre(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] (one size) -> uint8 [B, 3, size, size]: short side to `size`,
    bilinear with antialiasing, then the centre square (the CPU path's geometry)."""
    from torchvision.transforms.v2 import functional as F

    h, w = images.shape[-2:]
    nh, nw = target_size(h, w, size)
    if (nh, nw) != (h, w):
        images = F.resize(images, [nh, nw], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top:top + size, left:left + size]


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched decode_jpeg to RGB on `device` (nvJPEG on a GPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


@dataclass
class Raw:
    """A file for the GPU: its bytes. Plain bytes cross from a loader process by pickle; a
    tensor per file would take a shared-memory handle (a file descriptor) each."""

    path: str
    data: bytes

    def tensor(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)


@dataclass
class Done:
    """A file decoded on the CPU already (uint8 [3, S, S]) and why."""

    path: str
    image: np.ndarray
    reason: str


def prepare(paths: list[str], size: int) -> list[Raw | Done]:
    """The loader worker's half: read each file; what nvJPEG cannot take is decoded here."""
    from hpcxfer.data.folders import decode

    out: list[Raw | Done] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(None, "data", f"{path}: cannot read image ({e.strerror or e})") from None
        kind = sniff(data)
        if kind in TO_GPU:
            out.append(Raw(path, data))
        else:
            out.append(Done(path, decode(path, size), kind))  # raises DataError naming a bad file
    return out


class Assemble:
    """The training process's half: nvJPEG for the raw files, resize and crop on `device`."""

    def __init__(self, size: int, device: torch.device, gpu_decode=decode_jpegs):
        from hpcxfer.data.folders import decode

        self.size, self.device = size, device
        self.decode, self.cpu_decode = gpu_decode, decode
        self.counts: Counter[str] = Counter()

    def _gpu(self, raws: list[Raw]) -> list[torch.Tensor | None]:
        """Decoded images, None where nvJPEG refused one."""
        try:
            return list(self.decode([r.tensor() for r in raws], self.device))
        except RuntimeError as e:
            log.info("nvJPEG refused a batch of %d (%s); decoding one by one", len(raws), e)
        out: list[torch.Tensor | None] = []
        for r in raws:
            try:
                out.append(self.decode([r.tensor()], self.device)[0])
            except RuntimeError:
                out.append(None)
        return out

    def __call__(self, items: list[Raw | Done]) -> torch.Tensor:
        size = self.size
        batch = torch.empty((len(items), 3, size, size), dtype=torch.uint8, device=self.device)
        raw_at = [j for j, it in enumerate(items) if isinstance(it, Raw)]
        decoded = self._gpu([items[j] for j in raw_at]) if raw_at else []
        by_shape: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for j, img in zip(raw_at, decoded):
            if img is None or img.shape[0] != 3:
                self.counts["refused"] += 1
                batch[j] = torch.from_numpy(np.array(self.cpu_decode(items[j].path, size))).to(self.device)
                continue
            self.counts["gpu"] += 1
            by_shape.setdefault(tuple(img.shape[-2:]), []).append((j, img))
        for group in by_shape.values():
            at = torch.tensor([j for j, _ in group], device=self.device)
            batch[at] = resize_centre(torch.stack([img for _, img in group]), size)
        for j, it in enumerate(items):
            if isinstance(it, Done):
                self.counts[it.reason] += 1
                batch[j] = torch.from_numpy(np.array(it.image)).to(self.device)
        return batch

    def summary(self) -> str:
        c = self.counts
        cpu = {k: v for k, v in sorted(c.items()) if k != "gpu"}
        detail = ", ".join(f"{k} {v}" for k, v in cpu.items())
        text = f"nvJPEG decoded {c['gpu']} images; CPU fallback {sum(cpu.values())}"
        return text + (f" ({detail})" if detail else "")


def available(device: torch.device) -> bool:
    """Whether torchvision can decode JPEGs on `device` (a GPU, torchvision built with nvJPEG)."""
    if device.type != "cuda":
        return False
    try:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
        img = decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)[0]
        return img.shape == (3, 16, 16)
    except Exception as e:  # noqa: BLE001 - any failure means: decode on the CPU
        log.warning("nvJPEG is not usable on %s (%s); decoding JPEGs on the CPU", device, e)
        return False
