"""Mixed precision and memory format, decided once per task from `runtime` and the device.

auto: bf16 autocast on GPUs that support it (A100, H100/H200), fp16 autocast with a
gradient scaler where bf16 is missing (V100: Gadi's gpuvolta), fp32 on CPUs, where
autocast is slow and would change results that tests compare bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # None: fp32, no autocast
    channels_last: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        # fp16's 5-bit exponent underflows small gradients; bf16 has fp32's range.
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless fp16 needs it (its state is checkpointed either way)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve(amp: str, channels_last: bool, device: torch.device) -> Precision:
    """amp: auto | bf16 | fp16 | off (RuntimeSpec)."""
    if amp == "auto":
        dtype = (torch.bfloat16 if bf16_supported(device) else torch.float16) if device.type == "cuda" else None
    else:
        dtype = DTYPES.get(amp)
    return Precision(device=device, dtype=dtype, channels_last=channels_last and device.type == "cuda")
