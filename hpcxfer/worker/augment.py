"""Batched augmentation on uint8 image tensors kept in memory (on the GPU when there is one).

Decoding once and augmenting whole batches replaces a DataLoader's per-image work, which
dominates the small target sets that make up most of a study.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def random_crop_flip(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random `pad`-pixel translation (zero padding) and horizontal flip of each image.

    images: uint8 [B, C, H, W]. Random numbers come from `gen` (on the CPU) so that a
    resumed task draws the same ones as an uninterrupted run.
    """
    b, _c, h, w = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    flips = torch.rand(b, generator=gen) < 0.5
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dev = images.device
    rows = (offsets[0].to(dev)[:, None] + torch.arange(h, device=dev))  # [B, H]
    cols = (offsets[1].to(dev)[:, None] + torch.arange(w, device=dev))  # [B, W]
    cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


class Normalize:
    """uint8 -> float, scaled and standardised per channel, on the tensor's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


def resized_crop_boxes(b: int, height: int, width: int, gen: torch.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for a batch: [B, 4] boxes (top, left, h, w).

    Each image takes the first of `attempts` draws (area fraction in `scale`, log-uniform
    aspect ratio in `ratio`) that fits, else the centre crop clamped to `ratio`. All draws
    come from `gen`, a fixed number per batch, so a resumed run draws the same boxes.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, attempts, generator=gen, dtype=torch.float64))
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(b, attempts, generator=gen, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1)
    rows = torch.arange(b)
    w, h, ok = w[rows, first], h[rows, first], fits[rows, first]
    # fallback: the whole image, clamped to the aspect-ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(ok, w, fw)
    h = torch.where(ok, h, fh)
    u = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    top = torch.where(ok, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(ok, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def random_resized_crop_flip(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """ImageNet training augmentation on a batch: a random resized crop to `size` x `size`
    (bilinear) and a horizontal flip of half the images.

    images: uint8 [B, C, H, W] on any device; returns float [B, C, size, size] in 0..255.
    One affine grid per image does crop, scale and flip in a single grid_sample.
    """
    b, _, height, width = images.shape
    boxes = resized_crop_boxes(b, height, width, gen).double()
    flips = torch.rand(b, generator=gen) < 0.5
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    # align_corners=False: output edges (+-1) map to the box's edges in the input
    theta[:, 0, 0] = torch.where(flips, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = theta.to(device=images.device, dtype=torch.float32)
    grid = torch.nn.functional.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` of each image (a view). On images stored at short side
    256 and centre-cropped square, a 224 centre crop is exactly ImageNet's evaluation
    transform (resize 256, centre crop 224)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def for_training(ds) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The training augmentation a Dataset asks for (Dataset.augment)."""
    if ds.augment == "resized-crop-flip":
        return lambda images, gen: random_resized_crop_flip(images, ds.crop, gen)
    if ds.augment == "pad-crop-flip":
        pad = max(1, ds.image_size // 14)
        return lambda images, gen: random_crop_flip(images, pad, gen)
    raise ValueError(f"unknown augmentation {ds.augment!r}")


def for_evaluation(ds) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation view: the centre crop of the model's input size, or the whole image."""
    if ds.crop is None or ds.crop >= ds.image_size:
        return lambda images: images
    return lambda images: centre_crop(images, ds.crop)
