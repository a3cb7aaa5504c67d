"""A generic description of what one job needs; each backend translates it into its own
flags (submitit's equivalence table, in small)."""

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


@dataclass(frozen=True)
class GadiQueue:
    """One of Gadi's GPU queues (docs/design.md §4): CPUs and memory that come with each GPU."""

    name: str
    device: str  # the cost model's device name (hpcxfer/grid/cost.py DEVICES)
    gpus_per_node: int
    cpus_per_gpu: int
    mem_gb_per_gpu: int
    su_per_cpu_hour: float

    def request(self, gpus: int) -> dict[str, int]:
        """ncpus, ngpus and mem (GB) for `gpus` GPUs: Gadi insists on the ratio."""
        return {"ngpus": gpus, "ncpus": gpus * self.cpus_per_gpu, "mem_gb": gpus * self.mem_gb_per_gpu}

    def su_per_hour(self, gpus: int) -> float:
        # Charged for max(ncpus, memory share in CPUs); at the queue's ratio both are equal.
        return self.su_per_cpu_hour * gpus * self.cpus_per_gpu


#: Memory of each GPU model the site tables name, in GB (what sizes a protocol group).
GPU_MEMORY_GB: dict[str, float] = {"v100": 32, "a100": 80, "h200": 141}

GADI_QUEUES: dict[str, GadiQueue] = {
    "gpuvolta": GadiQueue("gpuvolta", "v100", 4, 12, 95, 3.0),
    "dgxa100": GadiQueue("dgxa100", "a100", 8, 16, 125, 4.5),
    "gpuhopper": GadiQueue("gpuhopper", "h200", 4, 12, 240, 7.5),
}
