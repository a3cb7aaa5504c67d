"""Facts about the machines hpcxfer runs on, in one place below both the grid (its cost
model) and the backends (what they request): NCI Gadi's GPU queues with the CPUs and
memory that come with each GPU and their SU rates, and the memory of each GPU model
(docs/design.md §4, §7). Imports nothing of hpcxfer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Queue:
    """A GPU queue as the cost model prices it: its device (a name of the cost model's
    device table, hpcxfer/grid/cost.py), the CPUs charged with each GPU and the SU rate."""

    device: str
    cpus_per_gpu: int
    su_per_cpu_hour: float


@dataclass(frozen=True, kw_only=True)
class GadiQueue(Queue):
    """One of Gadi's GPU queues (docs/design.md §4): what a job requests there besides."""

    name: str
    gpus_per_node: int
    mem_gb_per_gpu: int
    max_hours: int = 48  # the longest walltime a job may ask for

    def request(self, gpus: int) -> dict[str, int]:
        """ncpus, ngpus and mem (GB) for `gpus` GPUs: Gadi insists on the ratio."""
        return {"ngpus": gpus, "ncpus": gpus * self.cpus_per_gpu, "mem_gb": gpus * self.mem_gb_per_gpu}

    def su_per_hour(self, gpus: int) -> float:
        # Charged for max(ncpus, memory share in CPUs); at the queue's ratio both are equal.
        return self.su_per_cpu_hour * gpus * self.cpus_per_gpu


@dataclass(frozen=True)
class Cluster:
    """What a SLURM or PBS job asks for with each GPU where the grid does not say: assumed
    for a cluster hpcxfer has no table of (a common GPU node: 4 GPUs, 32 cores, 256 GB or
    more), and priced as the smallest GPU of the tables, so no estimate is too short."""

    cpus_per_gpu: int = 8
    mem_gb_per_gpu: int = 64
    device: str = "v100"


#: Memory of each GPU model the site tables name, in GB (what sizes a protocol group).
GPU_MEMORY_GB: dict[str, float] = {"v100": 32, "a100": 80, "h200": 141}

#: The smallest GPU of the tables: assumed where a grid asks for GPUs without saying which.
SMALLEST_GPU = "v100"

#: SLURM and PBS clusters without a table of their own (docs/design.md §4).
CLUSTER = Cluster(device=SMALLEST_GPU)

GADI_QUEUES: dict[str, GadiQueue] = {
    "gpuvolta": GadiQueue("v100", 12, 3.0, name="gpuvolta", gpus_per_node=4, mem_gb_per_gpu=95),
    "dgxa100": GadiQueue("a100", 16, 4.5, name="dgxa100", gpus_per_node=8, mem_gb_per_gpu=125),
    "gpuhopper": GadiQueue("h200", 12, 7.5, name="gpuhopper", gpus_per_node=4, mem_gb_per_gpu=240),
}
