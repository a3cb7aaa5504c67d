"""A study on disk: its task index, each task's resolved config, and each task's state.

The file system is the database. Submission writes `study.json`, `tasks.jsonl` and a
`task.json` per task; workers write only inside their own task folder; the state of a task
is read off its files (and, for queued work, the backend's own record).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import hpcxfer
from hpcxfer import results
from hpcxfer.errors import StudyError
from hpcxfer.fileio import atomic_write_json, iter_jsonl, iter_jsonl_lines, read_json, rewrite_jsonl, why_unreadable
from hpcxfer.grid.groups import Group, Unit, is_group_id
from hpcxfer.grid.task import TASK_ID, Task
from hpcxfer.layout import StudyPaths, TaskPaths
from hpcxfer.locks import Holder, describe, inspect
from hpcxfer.states import Held, Hold

if TYPE_CHECKING:
    from hpcxfer.grid.schema import Grid

STATES = ("pending", "queued", "running", "done", "failed", "pruned")


def study_paths(grid: Grid, root: str | None = None) -> StudyPaths:
    return StudyPaths.of(root or grid.root, grid.study)


def task_config(task: Task, grid: Grid) -> dict:
    """task.json: the task's identity plus where its data is and how it runs."""
    from hpcxfer.grid.expansion import task_data

    return {**task.to_dict(), "data": task_data(grid, task.stage), "runtime": grid.runtime.settings().to_dict()}


#: study.json's mark of a submit still recording the study (the time it began).
RECORDING = "recording"


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OS error of a write to `path` that does not name it (a write(2) or fsync that
    found the disk full) is raised naming it."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_study(paths: StudyPaths, grid: Grid, tasks: list[Task],
                blocks: Sequence[tuple[str, Sequence[Task]]] | None = None) -> None:
    """Record the grid's tasks in the study: new tasks are appended to the index (so the
    index of a known task never changes) and every unfinished task's task.json is
    (re)written, so a changed runtime section applies to work not yet done. study.json
    records the grid file and its sub-grids' fine-tuning task ids (`blocks`, the expansion's;
    expanded here when not given), so `status` never reads the grid file again.

    study.json is written first, marked RECORDING, and again without the mark once the
    index and every task.json are on disk: a submit that stops at any write in between
    leaves a study that says so (`status`) and that the next submit completes."""
    info, index = check_records(paths, grid)
    source = str(Path(grid.source).absolute())
    with _writing(paths.study_json):
        atomic_write_json(paths.study_json, {**info, RECORDING: time.time()})
    paths.tasks_dir.mkdir(parents=True, exist_ok=True)
    known = {t["task_id"] for t in index}
    added = [t.to_dict() for t in tasks if t.task_id not in known]
    if added:
        with _writing(paths.tasks_index):
            rewrite_jsonl(paths.tasks_index, index + added)
    for task in tasks:
        tp = paths.task(task.task_id)
        if not is_done(tp):
            config = task_config(task, grid)
            if _read_or_none(tp.config) != config:  # a re-submit rewrites (and fsyncs) only changes
                with _writing(tp.config):
                    atomic_write_json(tp.config, config)
    info.pop(RECORDING, None)
    if blocks is None:
        from hpcxfer.grid.expansion import expand_by_block  # pydantic's schema: never in a worker

        blocks = expand_by_block(grid)
    info["grids"] = sorted(set(info.get("grids") or []) | {source})
    recorded = info.get("subgrids") if isinstance(info.get("subgrids"), dict) else {}
    # A grid file submitted again (edited) replaces what it recorded; other files' stay.
    # Pairs, not a mapping: JSON objects are written with sorted keys, the grid's order counts.
    recorded[source] = [[name, list(dict.fromkeys(t.task_id for t in block))] for name, block in blocks]
    info.update({"hpcxfer_version": hpcxfer.__version__, "updated": time.time(),
                 "arch": grid.arch, "data": grid.data.model_dump(), "subgrids": recorded})
    with _writing(paths.study_json):
        atomic_write_json(paths.study_json, info)


def check_records(paths: StudyPaths, grid: Grid) -> tuple[dict, list[dict]]:
    """study.json and tasks.jsonl as `write_study` finds them (new ones for a new study),
    checked before anything is written: a damaged one is an error. Reads only, so a dry
    run says what the real submit would refuse."""
    info = _read_or_none(paths.study_json) if paths.study_json.exists() else {
        "study": grid.study, "created": time.time(), "grids": []}
    if not isinstance(info, dict) or not all(isinstance(g, str) for g in info.get("grids") or []):
        raise StudyError(f"{paths.study_json}: damaged (not a study record); restore it or move it aside")
    index = load_index(paths) if paths.tasks_index.exists() else []
    return info, index


def _read_or_none(path: Path) -> object:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def read_index(paths: StudyPaths) -> tuple[list[dict], list[str]]:
    """Every task of the study in index order (the array index of each), each record
    checked, and a line for each damaged one (`tasks.jsonl line 7: no 'split'`)."""
    tasks, problems, seen = [], [], set()
    try:
        lines = list(iter_jsonl_lines(paths.tasks_index))
    except OSError as e:  # the study's own index: without it there is no study to show
        raise StudyError(f"{paths.tasks_index}: cannot read: {e.strerror or e}") from None
    for lineno, value, why in lines:
        if why is None:
            try:
                task = Task.from_record(value)
            except ValueError as e:
                why = str(e)
            else:
                if task.task_id in seen:
                    why = f"task {task.task_id} listed twice"
                else:
                    seen.add(task.task_id)
                    tasks.append(value)
                    continue
        problems.append(f"{paths.tasks_index} line {lineno}: {why}")
    return tasks, problems


def load_index(paths: StudyPaths) -> list[dict]:
    """Every task of the study in index order; a damaged tasks.jsonl is an error (submit
    rewrites the index, and must not drop or renumber what it cannot read)."""
    tasks, problems = read_index(paths)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StudyError(f"{problems[0]}{more}; repair or remove the damaged lines")
    return tasks


def load_tasks(paths: StudyPaths) -> list[Task]:
    return [Task.from_dict(d) for d in load_index(paths)]


def read_record(path: Path, missing: str = "run `hpcxfer submit` again to write it") -> dict:
    """A JSON object that submit wrote (task.json, group.json); StudyError in one line when
    it is missing, unreadable or not an object."""
    hint = "run `hpcxfer submit` again to rewrite it"
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise StudyError(f"{path}: missing; {missing}") from None
    except (OSError, ValueError) as e:
        raise StudyError(f"{path}: unreadable ({e}); {hint}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: damaged (not a JSON object); {hint}")
    return data


def write_groups(paths: StudyPaths, groups: list[Group]) -> None:
    """groups/<id>/group.json for each group about to be submitted (an existing one names
    the same members: its id is their hash)."""
    for g in groups:
        gp = paths.group(g.group_id)
        if _read_or_none(gp.config) != g.to_dict():
            with _writing(gp.config):
                atomic_write_json(gp.config, g.to_dict())


def read_group(paths: StudyPaths, group_id: str) -> Group:
    """A group's record, checked: its members are task ids of the study's index."""
    gp = paths.group(group_id)
    hint = "run `hpcxfer submit` again to rewrite it"
    data = read_record(gp.config, "no such group in this study")
    if data.get("group_id") != group_id:
        raise StudyError(f"{gp.config}: damaged (not the record of group {group_id}); {hint}")
    members = data.get("members")
    if (not isinstance(members, list) or not members or len(set(map(str, members))) != len(members)
            or not all(isinstance(m, str) and TASK_ID.fullmatch(m) for m in members)):
        raise StudyError(f"{gp.config}: damaged (members is not a list of distinct task ids); {hint}")
    return Group(group_id, tuple(members))


def load_units(paths: StudyPaths, unit_ids: list[str]) -> list[Unit]:
    """What a backend's record or task list names (task ids and group ids) as units."""
    tasks = {t.task_id: t for t in load_tasks(paths)}
    out = []
    for uid in unit_ids:
        if is_group_id(uid):
            group = read_group(paths, uid)
            lacking = [m for m in group.members if m not in tasks]
            if lacking:
                raise StudyError(f"{paths.group(uid).config}: member {lacking[0]} is not a task of the study")
            deps = tuple(sorted({d for m in group.members for d in tasks[m].depends_on}))
            out.append(Unit(uid, "finetune", deps, group.members))
        elif uid in tasks:
            out.append(Unit.of_task(tasks[uid]))
        else:
            raise StudyError(f"{paths.tasks_index}: no task {uid[:80]!r} in this study")
    return out


def groups_of(paths: StudyPaths) -> dict[str, str]:
    """task id -> the group that last held it (the newest group.json naming it)."""
    out: dict[str, str] = {}
    if not paths.groups_dir.is_dir():
        return out
    found = []
    for f in paths.groups_dir.glob("*/group.json"):
        try:
            found.append((f.stat().st_mtime, read_group(paths, f.parent.name)))
        except (OSError, StudyError):
            continue  # a damaged group record names no member
    for _, g in sorted(found, key=lambda x: x[0]):
        for m in g.members:
            out[m] = g.group_id
    return out


def resolve_task(paths: StudyPaths, spec: str) -> str:
    """A task given as its index in tasks.jsonl or as its id -> its id."""
    index = load_index(paths)
    if spec.isascii() and spec.isdigit():
        i = int(spec[-20:]) if len(spec) <= 20 else len(index)  # no 4,300-digit int() for a typo
        if i >= len(index):
            raise StudyError(f"{paths.tasks_index}: no task with index {spec[:24]} (the study has {len(index)})")
        return index[i]["task_id"]
    if any(t["task_id"] == spec for t in index):
        return spec
    raise StudyError(f"{paths.tasks_index}: no task {spec[:80]!r} in this study; give its id or its index "
                     f"0..{len(index) - 1}")


def is_done(tp: TaskPaths) -> bool:
    """Whether the task has a valid result (see hpcxfer/results.py)."""
    return results.is_done(tp.result, tp.task_id)


@dataclass
class TaskState:
    task_id: str
    state: str
    dir: str
    stage: str = ""
    detail: str = ""
    log: str | None = None
    epoch: int | None = None
    group: str | None = None  # the protocol group that last held the task
    extra: dict = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # a record's path -> why it could not be read

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.pop("unreadable")
        return {**d, **extra}

    def warnings(self) -> list[str]:
        """One line per record of the task that could not be read."""
        return [f"{path}: unreadable ({why}); task {self.task_id} counts as not done"
                for path, why in self.unreadable.items()]


def task_lock(tp: TaskPaths) -> Holder | None:
    """Who holds the task's running.json and whether they are alive: on this host, while
    that very process runs (pid and start time); on another host, while its heartbeat is
    fresh (locks.STALE_S). None when there is no running.json."""
    return inspect(tp.running)


def task_running(tp: TaskPaths) -> bool:
    """Whether a live worker holds the task now."""
    holder = task_lock(tp)
    return holder is not None and holder.live


def metrics_records(tp: TaskPaths, unreadable: dict[str, str] | None = None) -> list[dict]:
    """The whole records of a task's metrics.jsonl ([] when there is none). One that cannot be
    read (a directory, a symlink loop, a FIFO, no permission) is [] too, and why is put
    in `unreadable` under its path: one damaged task never makes the study unreadable."""
    try:
        return list(iter_jsonl(tp.metrics))
    except OSError as e:
        if unreadable is not None:
            unreadable[str(tp.metrics)] = why_unreadable(e)
        return []


def last_epoch(tp: TaskPaths, unreadable: dict[str, str] | None = None) -> int | None:
    epochs = [r.get("epoch") for r in metrics_records(tp, unreadable)]
    return max((e for e in epochs if isinstance(e, int)), default=None)


def task_state(paths: StudyPaths, task: Task, queued: Mapping[str, Held] | set[str] = frozenset()) -> TaskState:
    """The state of one task, read off its files, joined with what backends hold for it:
    `queued` is a set of task ids, or task id -> what a backend holds of it (`Held`)."""
    tp = paths.task(task.task_id)
    st = TaskState(task.task_id, "pending", str(tp.dir), stage=task.stage)
    result, damaged = results.load(tp.result, task.task_id)
    if result is not None:
        st.state = "done"
        return st
    st.epoch = last_epoch(tp, st.unreadable)
    held = queued.get(task.task_id) if isinstance(queued, Mapping) else None
    if held:
        st.extra = {k: v for k, v in (("job", held.job), ("scheduler_state", held.scheduler_state)) if v}
    lock = task_lock(tp)
    if (lock and lock.live) or (held and held.state == Hold.RUNNING):
        st.state, st.log = "running", str(tp.log)
        return st
    # A running.json nobody alive holds (a worker killed by the OOM killer, a failed node)
    # is not believed: the task is whatever the scheduler and its other files say.
    # Queued again after a failure: the new job's state is the one that matters.
    if held and held.state == Hold.QUEUED or (not held and task.task_id in queued):
        st.state = "queued"
        st.detail = held.detail if held else ""
        if st.epoch is not None or tp.checkpoint.exists():
            st.detail += f"; requeued, resumes from its checkpoint (last evaluated epoch {st.epoch})"
        return st
    if damaged:
        if damaged.startswith(results.UNREADABLE):
            st.unreadable[str(tp.result)] = damaged.removeprefix(results.UNREADABLE).strip(" ()")
        st.state, st.log = "failed", str(tp.log)
        st.detail = f"damaged {tp.result.name}: {damaged}; trained again at the next submit"
        return st
    if tp.failed.is_file():
        st.state, st.log = "failed", str(tp.log)
        st.detail = failure_reason(tp)
        return st
    if tp.pruned.is_file():  # a search's decision, not a failure: a plain submit trains it on
        st.state, st.detail = "pruned", pruned_reason(tp)
        return st
    if held and held.state in (Hold.FAILED, Hold.STOPPED):
        # The scheduler ended it (walltime, memory, a cancel) before the worker could say why;
        # a stopped task (cancelled, or checkpointed for the next submit) is simply not done.
        st.state, st.log = "failed" if held.state == Hold.FAILED else "pending", held.log or str(tp.log)
        st.detail = held.detail + (f"; resumes from epoch {st.epoch} at the next submit"
                                   if st.epoch is not None else "")
        return st
    if st.epoch is not None or tp.checkpoint.exists():
        st.detail = f"interrupted after epoch {st.epoch or 0}; resumes from its checkpoint"
        st.log = str(tp.log)
    if lock:
        gone = f"its worker ({describe(lock)}) is gone: {lock.why}" if lock.owner else \
            f"{tp.running.name} names no worker"
        st.detail = "; ".join(filter(None, [st.detail, gone]))
        st.log = str(tp.log)
    return st


def failure_reason(tp: TaskPaths) -> str:
    """failed.json's error, or what is wrong with failed.json itself."""
    try:
        failed = read_json(tp.failed)
    except (OSError, ValueError):
        return f"failed (unreadable {tp.failed.name})"
    if not isinstance(failed, dict) or not isinstance(failed.get("error"), str):
        return f"failed (damaged {tp.failed.name})"
    return failed["error"][:2000]


def pruned_reason(tp: TaskPaths) -> str:
    """What pruned.json says: the rung and epoch a search stopped the task at."""
    pruned = _read_or_none(tp.pruned)
    if not isinstance(pruned, dict) or "rung" not in pruned:
        return f"pruned by the search ({tp.pruned.name} unreadable)"
    return f"pruned by the search at rung {pruned['rung']} (epoch {pruned.get('epoch')})"


def study_states(paths: StudyPaths, queued: Mapping[str, Held] | set[str] = frozenset(),
                 tasks: list[Task] | None = None) -> list[TaskState]:
    """The state of every task (of `tasks`, default: the whole index), with its group."""
    if not paths.tasks_index.exists():
        raise StudyError(f"{paths.dir}: no tasks.jsonl; not a submitted study")
    group = groups_of(paths)
    states = [task_state(paths, t, queued) for t in (load_tasks(paths) if tasks is None else tasks)]
    for st in states:
        st.group = group.get(st.task_id)
    return states


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer past a float's range
        return None
    return f if math.isfinite(f) else None


def task_progress(paths: StudyPaths, task: Task, st: TaskState) -> dict:
    """What `status` shows of a task beside its state: `epochs` (of the task), `epoch`
    (reached: the last evaluated one, or all of them once done), the latest `val_acc`,
    `wall_s` (the result's; while running, since its worker started) and `host`, read off
    result.json, metrics.jsonl and running.json. Values a damaged file holds are None."""
    tp = paths.task(task.task_id)
    out: dict = {"epochs": task.epochs, "epoch": st.epoch, "val_acc": None, "wall_s": None, "host": None}
    if st.state == "done":
        result, _ = results.load(tp.result, task.task_id)
        if result:
            out.update(epoch=result.get("epochs") if isinstance(result.get("epochs"), int) else task.epochs,
                       val_acc=_number(result.get("val_acc")), wall_s=_number(result.get("wall_s")),
                       host=result.get("host") if isinstance(result.get("host"), str) else None)
        return out
    records = metrics_records(tp)
    last = records[-1] if records else None
    if last:
        out.update(val_acc=_number(last.get("val_acc")), wall_s=_number(last.get("wall_s")))
    if st.state == "running":
        holder = task_lock(tp)
        if holder is not None and holder.owner is not None:
            out["host"] = holder.owner.host
            started = _number(holder.get("started"))
            if started is not None:
                out["wall_s"] = max(0.0, time.time() - started)
    return out
