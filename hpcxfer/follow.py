"""The use cases that follow a study once submitted (docs/design.md §7): what the backends
it has used hold of it (`held`), every task's state (`status`), `cancel` and `collect`.
hpcxfer/service.py decides what to submit on top of `held` and re-exports these, so the
command line reaches every use case through the service."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hpcxfer.backends import BACKENDS, Backend
from hpcxfer.backends.scheduler import SchedulerError
from hpcxfer.checkpoints import leftover_bytes
from hpcxfer.errors import StudyError
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Held
from hpcxfer.study import STATES, TaskState, study_states

if TYPE_CHECKING:
    from hpcxfer.collect.search import SearchView


def used_backends(paths: StudyPaths) -> list[tuple[str, Backend]]:
    """The backends this study has used (those with a folder of their own in it)."""
    return [(name, cls()) for name, cls in BACKENDS.items() if paths.backend(name).dir.is_dir()]


def held(paths: StudyPaths, warnings: list[str] | None = None) -> dict[str, Held]:
    """task id -> what the backend that last submitted it says (`Backend.view`): queued,
    running or (ended by the scheduler) failed. Only backends this study has used are
    asked. With a `warnings` list, a scheduler that cannot be reached adds a line to it
    instead of raising (status shows what is on disk); submit lets it raise (it must not
    submit what may be queued)."""
    out: dict[str, Held] = {}
    for name, backend in used_backends(paths):
        try:
            view = backend.view(paths)
        except SchedulerError as e:
            if warnings is None:
                raise
            warnings.append(f"{name} could not be asked ({e}); the states below are what is on disk: "
                            "queued tasks show as pending, running ones as running only while their worker's "
                            "lock is fresh")
            continue
        out.update(view)
    return out



# ---------------------------------------------------------------- status, cancel
@dataclass
class StudyStatus:
    paths: StudyPaths
    tasks: list[Task]
    states: list[TaskState]
    counts: dict[str, int]
    problems: list[str]  # what is wrong with the task index (its other lines still count)
    warnings: list[str]  # backends that could not be asked
    leftover_bytes: int = 0  # group checkpoints no unfinished member needs (hpcxfer/checkpoints.py)

    def progress(self, state: TaskState) -> dict:
        """What status shows of a task beside its state (hpcxfer/study.py `task_progress`)."""
        from hpcxfer.study import task_progress

        return task_progress(self.paths, self.task_of[state.task_id], state)

    @cached_property
    def search(self) -> SearchView | None:
        """A searched study's rungs, candidates and compute used (None: no search touched it)."""
        from hpcxfer.collect.search import search_view

        return search_view(self.paths, self.tasks)

    @cached_property
    def task_of(self) -> dict[str, Task]:
        return {t.task_id: t for t in self.tasks}

    def subgrids(self) -> dict[str, list[str]]:
        """sub-grid name -> its fine-tuning task ids, as the study recorded them at submit
        ({} for one sub-grid, or a study that recorded none)."""
        from hpcxfer import overview
        from hpcxfer.fileio import read_json

        try:
            study = read_json(self.paths.study_json)
        except (OSError, ValueError):
            study = None
        return overview.subgrids(study if isinstance(study, dict) else None)


def status(study_dir: str) -> StudyStatus:
    """Every task's state, read off the study's files and joined with what the backends
    hold; a backend that cannot be asked is a warning, not an error."""
    from hpcxfer.study import read_index

    paths = StudyPaths.existing(study_dir)
    warnings: list[str] = []
    unfinished = _recording(paths)
    if unfinished and not paths.tasks_index.is_file():
        raise StudyError(f"{paths.dir}: {unfinished}, before it recorded any task")
    if unfinished:
        warnings.append(f"{unfinished}; the tasks below are those it recorded")
    index, problems = read_index(paths)
    tasks = [Task.from_dict(d) for d in index]
    states = study_states(paths, held(paths, warnings=warnings), tasks)
    warnings += [line for s in states for line in s.warnings()]  # unreadable records: said, never fatal
    counts = {s: 0 for s in STATES}
    counts.update(Counter(s.state for s in states))
    return StudyStatus(paths, tasks, states, counts, problems, warnings, leftover_bytes(paths, states))


def _recording(paths: StudyPaths) -> str | None:
    """What study.json says of a submit that stopped while recording the study, or None."""
    from hpcxfer.fileio import read_json
    from hpcxfer.locks import inspect
    from hpcxfer.study import RECORDING

    try:
        since = read_json(paths.study_json).get(RECORDING)
    except (OSError, ValueError, AttributeError):
        return None
    if since is None:
        return None
    holder = inspect(paths.submit_lock)
    if holder is not None and holder.live:
        return None  # a submit is recording it right now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"the submit of {when} stopped before it had recorded the whole study; `hpcxfer submit` "
            "of its grid again completes it")


def cancel(study_dir: str, wait_s: float | None = None) -> list[str]:
    """Cancel what every backend this study has used still holds; the job ids cancelled. A
    submit of the study under way is waited for (up to `wait_s`, locks.CANCEL_WAIT_S by
    default), so that what it queues is cancelled too, never started after the cancel."""
    from hpcxfer.locks import CANCEL_WAIT_S, submit_lock

    paths = StudyPaths.existing(study_dir)
    wait_s = CANCEL_WAIT_S if wait_s is None else wait_s
    try:
        lock = submit_lock(paths, wait_s=wait_s, doing="cancel")
    except StudyError:
        if os.access(paths.dir, os.W_OK):
            raise
        lock = None  # a study this user cannot write: no submit of it to wait for
    try:
        return [j for _, backend in used_backends(paths) for j in backend.cancel(paths)]
    finally:
        if lock is not None:
            lock.release()


def report_path(study_dir: str) -> Path:
    """Where `hpcxfer report` writes by default: inside the study, no record of it."""
    return StudyPaths.existing(study_dir).report


def collect(study_dir: str, by: str | None = None):
    """A study's records read and summarised (collect/build.py), by the axes `by` names
    (`--by`; default: protocol and size)."""
    from hpcxfer.collect.aggregate import parse_by
    from hpcxfer.collect.build import collect as collect_study

    paths = StudyPaths.existing(study_dir)
    # What the backends hold, so a queued task reads "queued" here as in `status`; a
    # scheduler that cannot be asked leaves the states on disk (pending, running).
    return collect_study(paths, parse_by(by), held(paths, warnings=[]))
