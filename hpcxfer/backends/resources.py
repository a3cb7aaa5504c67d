"""What one job needs, sized from the plan: a generic description that each backend
translates into its own flags (submitit's equivalence table, in small). The sites' own
facts (Gadi's queues, a cluster's share per GPU, GPU memory) are in hpcxfer/sites.py.

Each stage's jobs get their own resources (docs/design.md §4). What the grid leaves out
comes from the cost model (hpcxfer/grid/cost.py), priced on the job's GPU:

- **walltime**: the stage's longest job, estimated (an array element: its longest worker;
  a Gadi packed job: its list dealt over its GPUs), x MARGIN plus MARGIN_MIN, rounded up to
  ROUND_MIN, at most the site's longest (`slurm.max_time`, `pbs.max_walltime`, 48 h on Gadi);
- **one GPU** (none with `runtime.device: cpu`), and the site's CPUs and memory per GPU;
- on Gadi, **GPUs per job**: the stage's workers over `gadi.max_jobs`, at most a node's.

A job cut off at its walltime leaves its task checkpointed; the plan counts the jobs a
task needs and allows `slurm.max_requeues` requeues on SLURM, `pbs.resubmits` and
`gadi.resubmits` more `hpcxfer submit`s on PBS and Gadi. A stage needing more is refused
(`check`); a grid that asks for less time than a task needs is warned about.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
from dataclasses import dataclass

from hpcxfer.errors import ConfigError
from hpcxfer.grid import cost
from hpcxfer.grid.expansion import expand_study
from hpcxfer.grid.schema import Grid
from hpcxfer.sites import CLUSTER, GADI_QUEUES, Queue

#: The walltime asked for beyond a job's estimate: x MARGIN + MARGIN_MIN minutes (a slower
#: node, a cold file system, the checkpoint at the end), rounded up to ROUND_MIN minutes.
MARGIN = 1.25
MARGIN_MIN = 10
ROUND_MIN = 15
#: Seconds of a job lost to each resume: start-up again and the stop before the limit.
RESUME_S = 300


def minutes(walltime: str) -> int:
    """'H:MM:SS', 'MM:SS' or 'M' -> whole minutes, rounded up (never less than 1)."""
    parts = [int(p) for p in walltime.split(":")]
    if len(parts) == 1:
        return max(1, parts[0])
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return max(1, math.ceil(seconds / 60))


def hms(total_minutes: int) -> str:
    return f"{total_minutes // 60}:{total_minutes % 60:02d}:00"


def padded(seconds: float) -> int:
    """Minutes of walltime for a job estimated at `seconds`: the margin, rounded up."""
    return math.ceil((seconds * MARGIN / 60 + MARGIN_MIN) / ROUND_MIN) * ROUND_MIN


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4
    minutes: int = 60

    @property
    def mem_mb(self) -> int:
        return math.ceil(self.mem_gb * 1024)

    @property
    def walltime(self) -> str:
        return hms(self.minutes)


@dataclass(frozen=True)
class StagePlan:
    """What one stage's jobs ask for, and what the plan expects of them."""

    stage: str
    resources: Resources
    slots: int                  # tasks at once in one job (Gadi: its GPUs; arrays: 1)
    device: str                 # the GPU the estimate is priced on
    job_s: float | None         # the longest job's estimate (None: not known, or no GPU)
    max_minutes: int            # the site's longest walltime
    resumes: int                # jobs after the first the plan allows a task
    time_field: str | None      # the grid field that set the walltime (None: the plan did)
    cap_field: str              # what sets the site's longest walltime
    resume_field: str           # the grid field that allows resumes
    remedy: str                 # what else shortens the longest job

    @property
    def jobs(self) -> int:
        """Jobs the longest task (or packed list) needs at this walltime, its estimate x
        MARGIN, each resume losing RESUME_S."""
        need, wall = (self.job_s or 0.0) * MARGIN, self.resources.minutes * 60
        if need <= wall:
            return 1
        return math.ceil((need + RESUME_S) / max(60.0, wall - RESUME_S))


class _Keyed:
    """A grid hashed by its content, so that the estimate of one grid is made once for
    every job script a submit renders."""

    def __init__(self, grid: Grid):
        self.grid, self.key = grid, grid.model_dump_json()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keyed) and other.key == self.key


def _estimate(grid: Grid, queue: Queue, slots: int) -> dict[str, list[float]] | None:
    return _estimate_of(_Keyed(grid), queue, slots)


@functools.lru_cache(maxsize=64)
def _estimate_of(keyed: _Keyed, queue: Queue, slots: int) -> dict[str, list[float]] | None:
    try:
        return cost.stage_workers(keyed.grid, expand_study(keyed.grid).tasks, queue, slots)
    except cost.UnknownSize:
        return None


def makespan(seconds: list[float], slots: int) -> float:
    """A packed job's time: its workers, in order, each on the first GPU to come free."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def array_plan(grid: Grid, stage: str, backend: str) -> StagePlan:
    """A SLURM or PBS array element's resources: one task (or group) per element."""
    r = grid.resources
    gpus = r.gpus if r.gpus is not None else (0 if grid.runtime.device == "cpu" else 1)
    cpus = r.cpus or (CLUSTER.cpus_per_gpu * gpus if gpus else 1)
    mem_gb = r.mem_gb or (CLUSTER.mem_gb_per_gpu * gpus if gpus else 4)
    if backend == "slurm":
        cap, resumes, cap_field, resume_field = grid.slurm.max_time, grid.slurm.max_requeues, "slurm.max_time", \
            "slurm.max_requeues"
    else:
        cap, resumes, cap_field, resume_field = grid.pbs.max_walltime, grid.pbs.resubmits, "pbs.max_walltime", \
            "pbs.resubmits"
    estimate = _estimate(grid, Queue(CLUSTER.device, max(1, cpus // max(1, gpus)), 0.0), 1) if gpus else None
    job_s = max(estimate[stage], default=0.0) if estimate else None
    cap_min = minutes(cap)
    if r.time:
        wall = minutes(r.time)
    else:
        wall = min(padded(job_s), cap_min) if job_s else cap_min
    return StagePlan(stage, Resources(gpus, cpus, mem_gb, wall), 1, CLUSTER.device, job_s, cap_min, resumes,
                     "resources.time" if r.time else None, cap_field, resume_field,
                     f"{cap_field} where the site allows longer jobs, or smaller protocol groups (runtime.group_max)")


def gadi_plan(grid: Grid, stage: str) -> StagePlan:
    """A Gadi packed job's resources: its share of the stage's workers over its GPUs."""
    g = grid.gadi
    q = GADI_QUEUES[g.queue]
    first = _estimate(grid, q, g.gpus_per_job or 1)
    n = len(first[stage]) if first else 1
    slots = g.gpus_per_job or max(1, min(q.gpus_per_node, math.ceil(n / g.max_jobs)))
    estimate = first if slots == (g.gpus_per_job or 1) else _estimate(grid, q, slots)
    job_s = None
    if estimate and estimate[stage]:
        size = math.ceil(len(estimate[stage]) / g.max_jobs)  # as the backend deals them
        seconds = estimate[stage]
        job_s = max(makespan(seconds[i:i + size], slots) for i in range(0, len(seconds), size))
    cap_min = q.max_hours * 60
    wall = minutes(g.walltime) if g.walltime else (min(padded(job_s), cap_min) if job_s else cap_min)
    req = q.request(slots)
    return StagePlan(stage, Resources(slots, req["ncpus"], req["mem_gb"], wall), slots, q.device, job_s, cap_min,
                     g.resubmits, "gadi.walltime" if g.walltime else None, f"{q.name}'s {q.max_hours} h",
                     "gadi.resubmits", "gadi.max_jobs (more jobs, shorter lists)")


def stage_plan(grid: Grid, stage: str, backend: str) -> StagePlan:
    """What `backend`'s jobs of `stage` ask for (slurm, pbs or gadi)."""
    return gadi_plan(grid, stage) if backend == "gadi" else array_plan(grid, stage, backend)


def check(grid: Grid, backend: str, stages: tuple[str, ...] = ("pretrain", "finetune")) -> list[str]:
    """One warning line per stage whose jobs ask for less time than its longest task (or
    packed list) needs, or for no GPU where the estimate is for one; raises ConfigError
    (one line) for a stage that cannot finish within its jobs and their resumes."""
    out = []
    for stage in stages:
        p = stage_plan(grid, stage, backend)
        if backend != "gadi" and grid.resources.gpus == 0 and grid.runtime.device != "cpu":
            out.append(f"{backend} {stage}: resources.gpus is 0 while runtime.device is {grid.runtime.device}: "
                       "the tasks run on CPUs, far slower than the estimate (priced on a GPU)")
        if not p.job_s or p.jobs == 1:
            continue
        what = "packed job" if backend == "gadi" else "task"
        why = p.time_field or (f"the longest, {p.cap_field}" if p.resources.minutes == p.max_minutes
                               else "from the estimate")
        need = (f"{stage}'s longest {what} is estimated at {hours(p.job_s)} on a {p.device} ({hours(p.job_s * MARGIN)} "
                f"with the margin); jobs of {p.resources.walltime} ({why}) finish it in {p.jobs} jobs")
        if p.jobs - 1 > p.resumes:
            raise ConfigError(grid.source, p.time_field or p.resume_field,
                              f"{need}, more than 1 + {p.resume_field} {p.resumes}; raise "
                              + (f"{p.time_field}, " if p.time_field else "") + f"{p.resume_field} or {p.remedy}")
        how = "requeued by SLURM" if backend == "slurm" else "each after another `hpcxfer submit`"
        out.append(f"{backend} {stage}: {need}: {p.jobs - 1} resume(s), {how} "
                   f"({p.resume_field} allows {p.resumes})")
    return out


#: A placeholder the user is meant to replace: `<project>`, `<your data>`.
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
#: The grid's fields that name places on the cluster.
PLACES = ("root", "data.path", "data.index_cache", "data.val_labels", "data.class_ids", "runtime.decode_cache",
          "gadi.project", "gadi.storage", "pbs.project", "pbs.queue", "slurm.account", "slurm.partition")


def placeholders(grid: Grid) -> list[str]:
    """`field: value` of each field that still holds a placeholder such as `<project>`."""
    found = []
    for name in PLACES:
        value: object = grid
        for part in name.split("."):
            value = getattr(value, part)
        if isinstance(value, str) and PLACEHOLDER.search(value):
            found.append(f"{name} {value!r}")
    return found
