"""Batched augmentation on uint8 image tensors kept in memory (on the GPU when there is one).

Decoding once and augmenting whole batches replaces a DataLoader's per-image work, which
dominates the small target sets that make up most of a study.
"""

from __future__ import annotations

import torch


def random_crop_flip(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random `pad`-pixel translation (zero padding) and horizontal flip of each image.

    images: uint8 [B, C, H, W]. Random numbers come from `gen` (on the CPU) so that a
    resumed task draws the same ones as an uninterrupted run.
    """
    b, c, h, w = images.shape
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
