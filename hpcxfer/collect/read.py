"""Read a study's records, forgiving what clusters leave behind and counting all of it.

A study directory holds `tasks.jsonl` and one folder per task. Clusters leave truncated last
lines (a job killed mid-write), garbage (a full disk, a stray editor), duplicated epochs (a
resumed task from before resume was strict), tasks with metrics but no result (running,
failed or cut off) and records written by an older hpcxfer. None of these stops a collect,
and none is dropped silently: every skipped line and task lands in `Skipped` with its reason.

Older formats: a `tasks.jsonl` line without a field added since (`frozen_layers`, `seed`, ...)
gets the value that field had before it existed (`TASK_DEFAULTS`); a `result.json` without a
metric takes it from the task's last metrics record; a metrics record with one `lr` (before
learning rates were kept per group) reads as `lr_high` = `lr_low` = `lr`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpcxfer import results
from hpcxfer.errors import StudyError
from hpcxfer.fileio import parse_jsonl, read_regular, why_unreadable
from hpcxfer.grid.task import QUIET_DEFAULTS, Task
from hpcxfer.layout import StudyPaths
from hpcxfer.results import METRICS
from hpcxfer.states import Held
from hpcxfer.study import task_state

#: Task fields an older tasks.jsonl may lack, and the value they had before they existed.
TASK_DEFAULTS = {"frozen_layers": 0, "seed": 0, "lr_gamma": 0.1, "decay_every": 30,
                 "momentum": 0.9, "weight_decay": 5e-4, "lr_high": 0.01, "lr_low": 0.001,
                 "depends_on": []}
#: Task fields without which a line is not a task (a default-valued `image_size` or
#: `crop` is left out of every record: hpcxfer/grid/task.py QUIET_DEFAULTS).
REQUIRED = tuple(f for f in Task.__dataclass_fields__ if f not in TASK_DEFAULTS and f not in QUIET_DEFAULTS)

#: How many example paths `Skipped` keeps per reason.
EXAMPLES = 3


@dataclass
class Skipped:
    """What collect skipped or adapted, counted by reason, with a few example paths."""

    lines: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    adapted: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _note(self, counter: Counter, reason: str, where: str | Path, n: int = 1) -> None:
        counter[reason] += n
        seen = self.examples.setdefault(reason, [])
        if len(seen) < EXAMPLES:
            seen.append(str(where))

    def line(self, reason: str, where: str | Path, n: int = 1) -> None:
        self._note(self.lines, reason, where, n)

    def task(self, reason: str, where: str | Path) -> None:
        self._note(self.tasks, reason, where)

    def adapt(self, reason: str, where: str | Path) -> None:
        self._note(self.adapted, reason, where)

    def merge(self, other: Skipped) -> None:
        for mine, theirs in ((self.lines, other.lines), (self.tasks, other.tasks), (self.adapted, other.adapted)):
            for reason, n in theirs.items():
                self._note(mine, reason, (other.examples.get(reason) or ["?"])[0], n)

    def __bool__(self) -> bool:
        return bool(self.lines or self.tasks or self.adapted)

    def notes(self) -> list[str]:
        """One human line per reason, e.g. `skipped 3 lines: not JSON (e.g. .../metrics.jsonl)`."""
        out = []
        for what, counter in (("lines", self.lines), ("tasks", self.tasks), ("records", self.adapted)):
            verb = "read" if what == "records" else "skipped"
            for reason, n in sorted(counter.items()):
                unit = what if n != 1 else what[:-1]
                out.append(f"{verb} {n} {unit} {reason} (e.g. {self.examples[reason][0]})")
        return out

    def to_dict(self) -> dict:
        return {"lines": dict(self.lines), "tasks": dict(self.tasks), "adapted": dict(self.adapted),
                "examples": self.examples}


def read_jsonl(path: Path, skipped: Skipped) -> list[dict]:
    """The whole JSON objects of a JSONL file (hpcxfer/fileio.py parse_jsonl); every other
    line is counted in `skipped` with its reason."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return []
    except OSError as e:  # one unreadable record costs its task, never the study
        skipped.task(f"with an unreadable {path.name} ({why_unreadable(e)})", path)
        return []
    records, problems = parse_jsonl(data)
    for why in problems:
        skipped.line(why, path)
    return records


def normalize_task(raw: dict, where: Path, skipped: Skipped) -> dict | None:
    """A tasks.jsonl record with older-format gaps filled, or None (counted) if unusable."""
    lacking = [f for f in REQUIRED if f not in raw]
    if lacking:
        skipped.task(f"in tasks.jsonl without {lacking[0]!r}", where)
        return None
    task = {**QUIET_DEFAULTS, **raw}
    for name, value in TASK_DEFAULTS.items():
        if name not in task:
            task[name] = value
            skipped.adapt(f"of an older format (task without {name!r}, read as {value!r})", where)
    try:
        Task.from_record(task)
    except ValueError as e:
        skipped.task(f"in tasks.jsonl that are damaged ({e})", where)
        return None
    return task


@dataclass
class StudyRecords:
    """Every task of a study, the usable results, and what is missing or was skipped."""

    paths: StudyPaths
    tasks: list[dict]  # every usable task of tasks.jsonl, in index order
    results: dict[str, dict]  # task_id -> result.json (metrics filled from metrics.jsonl if old)
    incomplete: list[dict]  # tasks without a usable result: task_id, stage, state, epoch, detail, log
    skipped: Skipped

    @property
    def rows(self) -> list[dict]:
        """One row per finished task: its fields and its result's metrics."""
        return [{**t, **{m: self.results[t["task_id"]].get(m) for m in METRICS}}
                for t in self.tasks if t["task_id"] in self.results]

    @property
    def missing(self) -> list[dict]:
        return [t for t in self.tasks if t["task_id"] not in self.results]

    @property
    def datasets(self) -> list[str]:
        return sorted({str(t["dataset"]) for t in self.tasks})


def load_task_index(paths: StudyPaths, skipped: Skipped) -> list[dict]:
    if not paths.tasks_index.is_file():
        raise StudyError(f"{paths.dir}: no tasks.jsonl; not a submitted study")
    tasks, seen = [], set()
    for raw in read_jsonl(paths.tasks_index, skipped):
        task = normalize_task(raw, paths.tasks_index, skipped)
        if task is None:
            continue
        if task["task_id"] in seen:
            skipped.task("listed twice in tasks.jsonl", paths.tasks_index)
            continue
        seen.add(task["task_id"])
        tasks.append(task)
    return tasks


def _state(paths: StudyPaths, task: dict, skipped: Skipped, held: Mapping[str, Held]) -> dict:
    """A task without a result, in `status`'s words (hpcxfer/states.py `State`: pending,
    queued, running, failed) and with its detail (interrupted at an epoch, a damaged
    result.json) and log."""
    st = task_state(paths, Task.from_dict(task), held)
    for where, why in st.unreadable.items():
        skipped.task(f"with an unreadable {Path(where).name} ({why}; counted as not done)", where)
    return {"task_id": st.task_id, "stage": st.stage, "state": st.state, "epoch": st.epoch,
            "detail": st.detail, "log": st.log}


def _read_result(paths: StudyPaths, task: dict, skipped: Skipped) -> dict | None:
    tp = paths.task(task["task_id"])
    result, damaged = results.load(tp.result, task["task_id"])
    if damaged:
        skipped.task(f"with a damaged result.json ({damaged})", tp.result)
        return None
    if result is None:
        return None
    lacking = [m for m in METRICS if m not in result]
    if lacking:
        last = {}
        for rec in read_jsonl(tp.metrics, skipped):
            if isinstance(rec.get("epoch"), int) and rec["epoch"] >= last.get("epoch", -1):
                last = rec
        for m in lacking:
            if last.get(m) is not None and results.metric_problem(m, last[m]) is None:
                result[m] = last[m]
                skipped.adapt(f"of an older format (result.json without {m!r}, taken from metrics.jsonl)", tp.result)
            else:
                skipped.adapt(f"without {m!r} (left out of that metric's mean)", tp.result)
    return result


def read_study(paths: StudyPaths, held: Mapping[str, Held] | None = None) -> StudyRecords:
    """Every task's result.json (metrics.jsonl only where a result is old or missing); the
    tasks without one in `status`'s states, joined with what the backends hold (`held`)."""
    skipped = Skipped()
    tasks = load_task_index(paths, skipped)
    results, incomplete = {}, []
    for task in tasks:
        result = _read_result(paths, task, skipped)
        if result is not None:
            results[task["task_id"]] = result
        else:
            incomplete.append(_state(paths, task, skipped, held or {}))
    return StudyRecords(paths, tasks, results, incomplete, skipped)
