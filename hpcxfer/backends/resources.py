"""A generic description of what one job needs; each backend translates it into its own
flags (submitit's equivalence table, in small). The sites' own facts (Gadi's queues, GPU
memory) are in hpcxfer/sites.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcxfer.grid.schema import Grid


def minutes(walltime: str) -> int:
    """'H:MM:SS', 'MM:SS' or 'M' -> whole minutes, rounded up (never less than 1)."""
    parts = [int(p) for p in walltime.split(":")]
    if len(parts) == 1:
        return max(1, parts[0])
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return max(1, math.ceil(seconds / 60))


def hms(total_minutes: int) -> str:
    return f"{total_minutes // 60}:{total_minutes % 60:02d}:00"


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4
    minutes: int = 60

    @classmethod
    def of(cls, grid: Grid) -> "Resources":
        r = grid.resources
        return cls(gpus=r.gpus, cpus=r.cpus, mem_gb=r.mem_gb, minutes=minutes(r.time))

    @property
    def mem_mb(self) -> int:
        return int(math.ceil(self.mem_gb * 1024))

    @property
    def walltime(self) -> str:
        return hms(self.minutes)
