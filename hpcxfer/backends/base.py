"""What every backend does: submit tasks, say which it still holds, cancel them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol

from hpcxfer.grid.schema import Grid
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths


@dataclass
class Submission:
    """What a submit did: the tasks handed to the scheduler, its job ids, and the exact
    commands (what --dry-run prints instead of running)."""

    backend: str
    tasks: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str

    def submit(self, paths: StudyPaths, grid: Grid, tasks: list[Task], *, dry_run: bool = False,
               wait: bool = False) -> Submission:
        """Hand `tasks` (none done, none held already) to the scheduler."""

    def held(self, paths: StudyPaths) -> set[str]:
        """Ids of the study's tasks this backend has queued or running."""

    def cancel(self, paths: StudyPaths) -> list[str]:
        """Cancel what the study has queued; returns the job ids cancelled."""


def worker_command(paths: StudyPaths, task: str) -> list[str]:
    """The command that runs one task. `-P` keeps the current directory off sys.path, so
    nothing is imported from a folder the user did not choose."""
    return [sys.executable, "-P", "-m", "hpcxfer", "run-task", str(paths.dir), task]
