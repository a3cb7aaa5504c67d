"""Stop requests: a signal only sets a flag; the training loop checkpoints at its next step
and the worker exits with status 75 ("resume me").

SIGUSR2 is what `sbatch --signal=USR2@90` (hpcxfer's SLURM jobs) sends before a walltime or a
preemption; SIGUSR1 is the other common choice of sites and users; SIGTERM is what SLURM
(without a user signal), PBS and `hpcxfer cancel` send before their SIGKILL. All three mean
the same here: save and leave while there is still time.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Self

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Interrupted(Exception):
    """Raised by the loop once it has checkpointed after a stop request."""

    def __init__(self, signum: int, epoch: int, step: int):
        self.signum, self.epoch, self.step = signum, epoch, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch} step {step}")


class StopFlag:
    """Installs handlers for STOP_SIGNALS on enter and restores the old ones on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop may be inside a CUDA kernel launch or a file write.
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> Self:
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()
