"""The use cases behind the command line (docs/design.md §7): plan, submit and its dry run,
status, wait and cancel. The command line parses arguments and renders what these return;
they hold the decisions: expanding the grid (once), joining the study's files with what
the backends hold, choosing what to submit, the submit lock, and the wait loop.

A backend's own way of working is its capability, never its name: one that runs its units
in this process (`Backend.in_process`, the local runner) is waited for by its own
`submit`; the others are polled through `Backend.view` until they hold none of the tasks.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from hpcxfer.backends import Backend, Submission, get_backend
from hpcxfer.backends.resources import placeholders
from hpcxfer.checkpoints import remove_leftovers, resumable
from hpcxfer.errors import ConfigError, StudyError
from hpcxfer.follow import StudyStatus, cancel, collect, held, report_path, status
from hpcxfer.grid import cost
from hpcxfer.grid.cost import fmt_images, fmt_number
from hpcxfer.grid.expansion import Expansion, expand_study
from hpcxfer.grid.groups import Group, Unit
from hpcxfer.grid.groups import units as make_units
from hpcxfer.grid.load import checked_root, load_grid
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Held
from hpcxfer.study import STATES, TaskState, study_paths, study_states

__all__ = [
    "STATES",
    "Backend",
    "DryRun",
    "GridPlan",
    "Outcome",
    "Plan",
    "Reporter",
    "Request",
    "StudyStatus",
    "cancel",
    "collect",
    "decide",
    "dry_run",
    "fmt_images",
    "fmt_number",
    "held",
    "plan",
    "prepare",
    "report_path",
    "status",
    "submit",
    "wait_for",
]


# ---------------------------------------------------------------- plan
@dataclass
class GridPlan:
    """What `plan` shows of a grid: its tasks, its sub-grids, and the cost estimate (or why
    there is none), from one expansion."""

    grid: Grid
    tasks: list[Task]
    blocks: list[tuple[str, list[Task]]]
    cost_rows: list[tuple[str, cost.Cost]] | None
    no_cost: str | None = None
    warnings: list[str] = field(default_factory=list)  # what submit would warn about or refuse

    def assumptions(self) -> list[str]:
        return cost.assumptions(self.grid, self.tasks)

    def row_notes(self) -> list[str]:
        """What the cost table's rows add up to, one line each."""
        if not self.cost_rows:
            return []
        grouped = self.cost_rows[-1][0] == cost.TOTAL_GROUPED
        return [cost.ROWS_NOTE, *([cost.GROUPED_NOTE] if grouped else [])]

    def summary(self) -> str:
        return cost.summary_line(self.cost_rows[-1][1]) if self.cost_rows else f"no cost estimate: {self.no_cost}"


def plan(grid_file: str) -> GridPlan:
    grid = load_grid(grid_file)
    expansion = expand_study(grid)
    rows, why = _price(grid, expansion)
    return GridPlan(grid, expansion.tasks, expansion.blocks, rows, why, _plan_warnings(grid))


def _plan_warnings(grid: Grid) -> list[str]:
    """What a submit to each scheduler whose section the grid sets would warn about or
    refuse, and the placeholders it would refuse."""
    given = grid.model_fields_set
    chosen = [n for n in ("slurm", "pbs", "gadi") if n in given or (n != "gadi" and "resources" in given)]
    out = []
    for name in chosen:
        try:
            out += get_backend(name).check_resources(grid)
        except ConfigError as e:
            out.append(f"submit --backend {name} would refuse: {e}")
    out += [f"{p}: a placeholder; submit refuses it until it is set" for p in placeholders(grid)]
    return out


def _price(grid: Grid, expansion: Expansion) -> tuple[list[tuple[str, cost.Cost]] | None, str | None]:
    try:
        return cost.price_study(grid, expansion=expansion), None
    except cost.UnknownSize as e:
        return None, str(e)


# ---------------------------------------------------------------- what to submit
@dataclass
class Request:
    """A grid about to be submitted: loaded, its backend chosen, its study directory
    checked (before anything is written) and its tasks expanded, once."""

    grid: Grid
    backend: Backend
    paths: StudyPaths
    tasks: list[Task]
    estimate: str  # the cost line that plan prints too
    warnings: list[str] = field(default_factory=list)  # what the jobs ask for, against the estimate
    placeholders: list[str] = field(default_factory=list)  # fields still holding `<project>` and the like
    blocks: list[tuple[str, list[Task]]] | None = None  # each sub-grid's fine-tuning tasks, recorded at submit


def prepare(grid_file: str, backend: str | None, root: str | None) -> Request:
    grid = load_grid(grid_file)
    chosen = get_backend(backend)
    try:
        checked = checked_root(grid, root, chosen.name)  # before anything is written
    except OSError as e:
        raise os_error(e, "find the study directory") from None
    expansion = expand_study(grid)
    rows, why = _price(grid, expansion)
    estimate = GridPlan(grid, expansion.tasks, expansion.blocks, rows, why).summary()
    warnings = chosen.check_resources(grid)  # a task that cannot finish is refused here
    return Request(grid, chosen, study_paths(grid, checked), expansion.tasks, estimate, warnings, placeholders(grid),
                   expansion.blocks)


@dataclass
class Plan:
    """What a submit decides: the state of each of the grid's tasks, those left to run
    (pending or failed) and the units they run as (tasks alone and protocol groups)."""

    paths: StudyPaths
    backend: str
    tasks: list[Task]
    states: dict[str, TaskState]
    todo: list[Task]
    units: list[Unit]
    groups: list[Group]

    def counts(self) -> Counter:
        return Counter(s.state for s in self.states.values())

    def members(self) -> set[str]:
        return {m for u in self.units for m in u.members}


def decide(req: Request, holding: dict[str, Held]) -> Plan:
    """The one decision of what to submit, for the real submit and its dry run alike. A
    study without a task index yet (a dry run of a new study) has every task pending."""
    paths, tasks = req.paths, req.tasks
    if paths.tasks_index.is_file():
        states = {s.task_id: s for s in study_states(paths, holding, tasks)}
    else:
        states = {t.task_id: TaskState(t.task_id, "pending", str(paths.task(t.task_id).dir), stage=t.stage)
                  for t in tasks}
    # A task a search pruned is trained on by a plain submit, like any interrupted task.
    todo = [t for t in tasks if states[t.task_id].state in ("pending", "failed", "pruned")]
    # Protocol groups are formed from what is left to run: a finished member is never rerun,
    # a unit holding a checkpoint (a group's, a task's mid-epoch) runs again as it is, and
    # tasks whose own checkpoints stand at one epoch boundary may group.
    kept, alone, starts = resumable(paths, tasks, todo)
    todo_units, groups = make_units(todo, req.grid.runtime.group_max, req.backend.device_memory_gb(req.grid),
                                    kept, alone, starts)
    return Plan(paths, req.backend.name, tasks, states, todo, todo_units, groups)


# ---------------------------------------------------------------- dry run
@dataclass
class DryRun:
    plan: Plan
    submission: Submission
    notes: list[str] = field(default_factory=list)


def dry_run(req: Request) -> DryRun:
    """What a submit would do: no scheduler needed, the data set not opened, nothing
    written (the backend's scripts and task lists come back in `submission.files`)."""
    from hpcxfer.study import check_records

    check_records(req.paths, req.grid)  # what the real submit would refuse, refused here too
    notes: list[str] = []
    # An existing study is read (never written) for what is left.
    holding = held(req.paths, warnings=notes) if req.paths.tasks_index.is_file() else {}
    chosen = decide(req, holding)
    sub = req.backend.submit(req.paths, req.grid, chosen.units, dry_run=True)
    data = req.grid.data
    notes = [(f"data not checked (dry run): {data.dataset} at {data.path or 'its default places'} is "
             "opened and checked by the real submit"), *notes, *sub.notes]
    notes += [f"{p}: a placeholder, which the real submit refuses" for p in req.placeholders]
    return DryRun(chosen, sub, notes)


# ---------------------------------------------------------------- submit and wait
class Reporter(Protocol):
    """What the command line shows while a submit runs."""

    def estimate(self, line: str) -> None: ...

    def plan(self, plan: Plan) -> None: ...

    def submitted(self, sub: Submission) -> None: ...

    def watch(self, kind: str, paths: StudyPaths, wanted: set[str],
              total: int) -> AbstractContextManager[Callable[..., None]]:
        """A progress display of the `wanted` tasks, entered for the time of a wait. It
        counts tasks (never workers: a protocol group is one worker for many tasks) and
        reads their progress itself (hpcxfer/progress.py). The callable says that something
        changed: kind "workers" (an in-process backend's runner, whose tasks wait in this
        process): `on_change(counts)` with the runner's counts of its `total` units; kind
        "tasks" (polled from the schedulers): `update(counts, view)` with the study states'
        counts and what the backends hold (`held`)."""
        ...


@dataclass
class Outcome:
    submission: Submission
    unfinished: list[TaskState] | None = None  # with wait: the grid's tasks that are not done


def os_error(e: OSError, doing: str, where: object = "hpcxfer") -> StudyError:
    """An OS error at the edge (a read-only or full file system, no permission, the current
    folder deleted) as one line naming the path."""
    if e.filename is None and isinstance(e, FileNotFoundError):
        try:
            os.getcwd()
        except OSError:
            return StudyError(f"cannot {doing}: the current folder is gone (deleted?); cd to an existing folder "
                              "or give the grid's root (or --root) as an absolute path")
    where = e.filename if e.filename is not None else where
    return StudyError(f"{where}: cannot {doing}: {e.strerror or e}")


def submit(req: Request, report: Reporter, wait: bool = False) -> Outcome:
    """Check the data, record the study, decide what to submit and submit it, all under the
    study's submit lock (two submits would each submit everything; a cancel waits for it);
    with `wait`, stay until none of the grid's tasks is held any more, by this submit or
    another one.

    Recording is a transaction (hpcxfer/study.py `write_study`): a new study that cannot be
    recorded whole is removed again, an existing one is left marked incomplete for the next
    submit to complete; an OS error is one line naming the path."""
    from hpcxfer.extras import require_train

    if req.placeholders:
        raise ConfigError(req.grid.source, req.placeholders[0].split()[0], "holds a placeholder: "
                          + "; ".join(req.placeholders) + " (set it to the real place, then submit)")
    require_train("hpcxfer submit (the workers it starts, and its check of the data set)")
    from hpcxfer.locks import submit_lock
    from hpcxfer.study import write_groups, write_study
    from hpcxfer.worker.protocol import check_inputs  # imports torch: after the grid is known to be good

    grid, backend, paths, tasks = req.grid, req.backend, req.paths, req.tasks
    check_inputs(grid, tasks)
    report.estimate(req.estimate)
    new = not paths.dir.exists()
    try:
        lock = submit_lock(paths)
    except StudyError:
        if new:
            try:
                paths.dir.rmdir()  # the folder the lock would have been in, if still empty
            except OSError:
                pass
        raise
    with lock:
        try:
            write_study(paths, grid, tasks, req.blocks)
            chosen = decide(req, held(paths))
            write_groups(paths, chosen.groups)
            if not grid.runtime.keep_checkpoints:  # after decide: a group it keeps is needed
                remove_leftovers(paths, chosen.states.values())
        except OSError as e:
            if new:  # nothing of it was submitted: the study appears whole or not at all
                shutil.rmtree(paths.dir, ignore_errors=True)
            raise os_error(e, "record the study", paths.dir) from None
        report.plan(chosen)
        try:
            if wait and backend.in_process and chosen.units:
                with report.watch("workers", paths, chosen.members(), len(chosen.units)) as on_change:
                    sub = backend.submit(paths, grid, chosen.units, wait=True, on_change=on_change,
                                         recorded=lock.release)
            else:
                sub = backend.submit(paths, grid, chosen.units)
        except OSError as e:
            raise os_error(e, f"submit to {backend.name}", paths.dir) from None
    report.submitted(sub)
    if not wait:
        return Outcome(sub)
    # What another submit or runner holds of the grid is waited for too (an in-process
    # backend's own units are done by now).
    wait_for(paths, tasks, report, poll_s=LOCAL_POLL_S if backend.in_process else None)
    return Outcome(sub, [s for s in study_states(paths, held(paths), tasks) if s.state != "done"])


#: Seconds between two looks at the scheduler while `submit --wait` waits.
POLL_S = 10.0
#: The same for a backend that runs on this machine (reading its run files is cheap).
LOCAL_POLL_S = 1.0


def wait_for(paths: StudyPaths, tasks: list[Task], report: Reporter, poll_s: float | None = None) -> None:
    """Until the backends hold none of `tasks` (none queued, none running)."""
    poll_s = POLL_S if poll_s is None else poll_s
    wanted = {t.task_id for t in tasks}

    def counts() -> tuple[Counter, dict]:
        view = held(paths)
        return Counter(s.state for s in study_states(paths, view, tasks)), view

    now, view = counts()
    if not now.get("queued") and not now.get("running"):
        return  # nothing to watch
    with report.watch("tasks", paths, wanted, len(wanted)) as update:
        while True:
            update(now, view)
            if not now.get("queued") and not now.get("running"):
                return
            time.sleep(poll_s)
            now, view = counts()
