"""NCI Gadi: PBS Pro without arrays. Each stage's tasks are dealt into at most
`gadi.max_jobs` packed jobs; each job asks for `gpus_per_job` GPUs (by default sized from the
plan, hpcxfer/backends/resources.py) on one node of a queue of the table in hpcxfer/sites.py
(with the CPUs and memory Gadi requires per GPU), a walltime from the plan, `-l storage` so /g/data
and /scratch are mounted, node-local `jobfs`, `wd`, and runs one task per GPU at a time
(`hpcxfer.backends.pack`) until its list or its walltime runs out. What a walltime kill
leaves unfinished resumes from its checkpoint at the next `hpcxfer submit`.

A job sees /scratch/<p> and /g/data/<p> only if `-l storage` names them (docs/design.md §4),
so the directive names every such folder the job touches (`storage()`), merged with
`gadi.storage`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import hpcxfer
from hpcxfer.backends.pbs import PbsBackend
from hpcxfer.backends.records import Submitted
from hpcxfer.backends.resources import stage_plan
from hpcxfer.backends.scheduler import PROMOTION_CPUS, PROMOTION_MEM_MB, PROMOTION_MINUTES
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths, cache_root
from hpcxfer.sites import GADI_QUEUES, GPU_MEMORY_GB

#: A Gadi project's folder on each file system, and the name `-l storage` gives it.
_STORAGE = re.compile(r"^/(?:(scratch)|g/(data))/([a-z0-9]+)(?:/|$)")


def storage_of(path: str | Path) -> str | None:
    """`scratch/ab12` for a path under /scratch/ab12, `gdata/ab12` under /g/data/ab12."""
    m = _STORAGE.match(os.path.normpath(str(path)))
    if not m:
        return None
    return f"{'scratch' if m.group(1) else 'gdata'}/{m.group(3)}"


def touched(paths: StudyPaths, grid: Grid) -> list[str]:
    """Every folder a job of the study reads or writes: the study, the data set, its file
    index cache, hpcxfer's cache, the Python environment and hpcxfer itself (each as given
    and with its links resolved)."""
    found = [str(paths.dir), str(cache_root()), sys.prefix, sys.executable, str(Path(hpcxfer.__file__).parent)]
    data = grid.data
    if data.path:
        found.append(str(Path(data.path).absolute()))
    if data.index_cache:
        found.append(str(Path(data.path or ".", data.index_cache).absolute()))
    return found + [os.path.realpath(p) for p in found]


def storage(paths: StudyPaths, grid: Grid) -> str | None:
    """`-l storage=`: `gadi.storage`'s entries, then every /scratch/<p> and /g/data/<p>
    the job touches (sorted), each once; None when there is none."""
    given = grid.gadi.storage.split("+") if grid.gadi.storage else []
    inferred = sorted({s for p in touched(paths, grid) if (s := storage_of(p))} - set(given))
    return "+".join(given + inferred) or None


#: Where a search's promotion job runs: Gadi's CPU queue (a GPU queue would charge a whole
#: GPU's share of a node for a job that only reads files and calls qsub).
PROMOTION_QUEUE = "normal"


class GadiBackend(PbsBackend):
    name = "gadi"
    template = "gadi_pack.sh.j2"

    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        return math.ceil(n / grid.gadi.max_jobs), None

    def options(self, paths: StudyPaths, grid: Grid, stage: str, n_tasks: int, after: list[str]) -> dict:
        g, res = grid.gadi, stage_plan(grid, stage, self.name).resources
        opts = {"-N": f"hpcxfer-{stage}", "-j": "oe", "-o": f"{paths.backend(self.name).logs}/",
                "-P": g.project, "-q": g.queue, "-l ncpus=": res.cpus, "-l ngpus=": res.gpus,
                "-l mem=": f"{res.mem_gb:g}GB", "-l jobfs=": f"{g.jobfs_gb}GB", "-l walltime=": self.walltime(grid, stage),
                "-l storage=": storage(paths, grid), "-l wd": True}
        if after:
            opts["-W depend="] = "afterok:" + ":".join(after)
        return opts

    def promotion_options(self, paths: StudyPaths, grid: Grid, after: list[str]) -> dict:
        """One CPU of the normal queue, charged to the stages' project, with the same file
        systems mounted, after the rung's packed jobs however they end (afterany)."""
        return {"-N": "hpcxfer-tune", "-j": "oe", "-o": f"{paths.promotion_dir}/", "-P": grid.gadi.project,
                "-q": PROMOTION_QUEUE, "-l ncpus=": PROMOTION_CPUS, "-l mem=": f"{PROMOTION_MEM_MB // 1024}GB",
                "-l walltime=": f"00:{PROMOTION_MINUTES:02d}:00", "-l storage=": storage(paths, grid), "-l wd": True,
                "-W depend=": "afterany:" + ":".join(sorted(set(after))) if after else None}

    def walltime(self, grid: Grid, stage: str) -> str:
        total = stage_plan(grid, stage, self.name).resources.minutes
        return f"{total // 60:02d}:{total % 60:02d}:00"

    def device_memory_gb(self, grid: Grid) -> float | None:
        return grid.resources.gpu_memory_gb or GPU_MEMORY_GB[GADI_QUEUES[grid.gadi.queue].device]

    def describe(self, grid: Grid, stage: str, n_tasks: int) -> str:
        g, res = grid.gadi, stage_plan(grid, stage, self.name).resources
        rate = GADI_QUEUES[g.queue].su_per_hour(res.gpus)
        return (f"{stage}, {n_tasks} task(s) on {res.gpus} GPU(s) of {g.queue}: "
                f"{rate:g} SU/h, at most {rate * res.minutes / 60:g} SU")

    def threads(self, grid: Grid, stage: str = "finetune") -> int:
        return grid.runtime.threads or GADI_QUEUES[grid.gadi.queue].cpus_per_gpu

    def context(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path) -> dict:
        res = stage_plan(grid, stage, self.name).resources
        return {"slots": res.gpus, "walltime_s": res.minutes * 60}

    def _submit_job(self, paths, grid, stage, task_ids, list_file, after, dry_run) -> Submitted:
        job = super()._submit_job(paths, grid, stage, task_ids, list_file, after, dry_run)
        if dry_run:
            return job
        return replace(job, elements=(job.job_id,) * len(task_ids))  # every task of a packed job is the job
