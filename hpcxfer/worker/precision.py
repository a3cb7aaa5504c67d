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

    def scaler(self) -> LossScaler:
        """A scaler that is a no-op unless fp16 needs it (its state is checkpointed either way)."""
        return LossScaler(enabled=self.needs_scaler)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class LossScaler:
    """Dynamic loss scaling for one model, as torch.amp.GradScaler does it (the same scale,
    backoff and growth, so the same steps are skipped), in public terms: its whole state is
    `state_dict()`, which fused mode (hpcxfer/worker/fused.py) reads and writes per member.
    Disabled (fp32, bf16), it passes the loss and the step through untouched."""

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale_value, self.tracker = init_scale, 0  # tracker: finite steps since the last change
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.found_inf = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients and step, unless one of them is not finite (skipped)."""
        if not self.enabled:
            optimizer.step()
            return
        inv = torch.tensor(self.scale_value, dtype=torch.float64).reciprocal().float().item()
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = torch.ones((), dtype=torch.bool, device=grads[0].device) if grads else torch.tensor(True)
        for grad in grads:
            grad.mul_(inv)
            finite &= torch.isfinite(grad).all()
        self.found_inf = not bool(finite)
        if not self.found_inf:
            optimizer.step()

    def update(self) -> None:
        if not self.enabled:
            return
        if self.found_inf:
            self.scale_value, self.tracker = self.scale_value * self.backoff_factor, 0
        elif self.tracker + 1 == self.growth_interval:
            self.scale_value, self.tracker = self.scale_value * self.growth_factor, 0
        else:
            self.tracker += 1

    def state_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {"scale": self.scale_value, "growth_tracker": self.tracker, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scale_value, self.tracker = float(state["scale"]), int(state.get("growth_tracker", 0))
            self.growth_factor = float(state.get("growth_factor", self.growth_factor))
            self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
            self.growth_interval = int(state.get("growth_interval", self.growth_interval))


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve(amp: str, channels_last: bool, device: torch.device) -> Precision:
    """amp: auto | bf16 | fp16 | off (RuntimeSpec)."""
    if amp == "auto":
        dtype = (torch.bfloat16 if bf16_supported(device) else torch.float16) if device.type == "cuda" else None
    else:
        dtype = DTYPES.get(amp)
    return Precision(device=device, dtype=dtype, channels_last=channels_last and device.type == "cuda")
