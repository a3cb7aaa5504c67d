"""What every backend does: submit tasks, say which it still holds, cancel them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol

from hpcxfer.grid.groups import Unit
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.sites import GPU_MEMORY_GB, SMALLEST_GPU
from hpcxfer.states import Held


@dataclass
class Submission:
    """What a submit did: the tasks handed to the scheduler (as units: tasks alone and
    protocol groups), its job ids, and the exact commands (what --dry-run prints instead
    of running). A dry run writes nothing: `files` holds what it would have written (job
    scripts and task lists, path -> text), `notes` what it assumed instead of asking."""

    backend: str
    tasks: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    """A backend, as the service layer (hpcxfer/service.py) uses it; docs/design.md §7."""

    name: str
    #: True: `submit(..., wait=True)` runs the units in this process and returns when they
    #: have ended, calling `on_change` with its counts as they change and `recorded` once
    #: the units are recorded as held (the local runner). False: `submit` hands them to a
    #: scheduler and returns; `submit --wait` then polls `view` until none is held.
    in_process: bool

    def submit(self, paths: StudyPaths, grid: Grid, units: list[Unit], *, dry_run: bool = False,
               wait: bool = False, **in_process_hooks) -> Submission:
        """Hand `units` (tasks alone or protocol groups; none done, none held already) to
        the scheduler: one array element, packed slot or local process each. Only an
        `in_process` backend is given `wait=True` with the hooks `on_change` and `recorded`."""

    def view(self, paths: StudyPaths) -> dict[str, Held]:
        """task id -> what this backend holds of the study's task it last ran (its state
        queued, running, failed or stopped; what hpcxfer/study.py's `task_state` joins with
        the task's files). Raises SchedulerError when the scheduler cannot be asked."""

    def device_memory_gb(self, grid: Grid) -> float | None:
        """Memory of the GPU one unit runs on (sizes automatic protocol groups); None when
        the tasks run on CPUs or it is not known."""

    def cancel(self, paths: StudyPaths) -> list[str]:
        """Cancel what the study has queued; returns the job ids cancelled."""

    def check_resources(self, grid: Grid) -> list[str]:
        """One line for each stage whose jobs ask for less than its tasks need; raises
        ConfigError where a task cannot finish within its jobs and their resumes."""


def requested_gpu_memory_gb(grid: Grid) -> float | None:
    """The grid's `resources.gpu_memory_gb`, or 32 GB (a V100's, the smallest of the site
    tables, hpcxfer/sites.py) where it asks for GPUs without saying which."""
    r = grid.resources
    gpus = r.gpus if r.gpus is not None else grid.runtime.device != "cpu"  # one GPU unless told otherwise
    return r.gpu_memory_gb or (float(GPU_MEMORY_GB[SMALLEST_GPU]) if gpus else None)


def members(units: list[Unit]) -> dict[str, list[str]]:
    """group id -> its members, for the units that are groups (what a backend records so that
    status can find the job of each task)."""
    return {u.id: list(u.members) for u in units if u.is_group}


def worker_command(paths: StudyPaths, task: str) -> list[str]:
    """The command that runs one task. `-P` keeps the current directory off sys.path, so
    nothing is imported from a folder the user did not choose."""
    return [sys.executable, "-P", "-m", "hpcxfer", "run-task", str(paths.dir), task]
