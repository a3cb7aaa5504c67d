"""How far a wait has come and when it may end, counted in tasks and measured in epochs.

A worker writes `progress.json` ({"epoch": epochs completed, "epochs": total, "time": unix
time}) at the end of every epoch, so a running task's epoch is known from its first epoch
on, not only at its evaluations (metrics.jsonl, the fallback). A `Tracker` polls the
tasks of a wait: it counts them by state, reports each one that ends (done, failed,
cancelled), and measures the study's rate in epochs per second from the epochs it sees
completed between polls (until it has seen any, from the running tasks' own records). The
estimate is epochs left / rate, counted down with the clock between polls and recomputed
at each: progress that stalls makes it grow, tasks that finish make it fall.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths, TaskPaths
from hpcxfer.states import Held, State
from hpcxfer.study import last_epoch, task_state

#: The wait's word for a task stopped at the search's rung it waits for (done for this wait).
AT_RUNG = "at its rung"

#: Seconds of observations the measured rate is taken over: long enough to span several
#: epochs of a slow task, short enough to follow a queue that grows or shrinks.
WINDOW_S = 1800.0


@dataclass(frozen=True)
class Mark:
    """A task's progress.json: epochs completed of epochs, at a unix time."""

    epoch: int
    epochs: int | None
    time: float


def read_mark(path: Path) -> Mark | None:
    """progress.json, or None when it is absent or damaged (unknown, never an error)."""
    try:
        data = json.loads(path.read_text())
        epoch, epochs, at = data["epoch"], data.get("epochs"), float(data["time"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or not math.isfinite(at):
        return None
    return Mark(epoch, epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None, at)


def epochs_done(tp: TaskPaths, evaluated: int | None = None) -> int | None:
    """Epochs a task has completed: progress.json's count, or its last evaluated epoch
    (`evaluated`, when the caller has read it already)."""
    mark = read_mark(tp.progress)
    evaluated = last_epoch(tp) if evaluated is None else evaluated
    known = [e for e in (mark.epoch if mark else None, evaluated) if e is not None]
    return max(known) if known else None


@dataclass(frozen=True)
class Running:
    task_id: str
    epoch: int | None  # epochs completed; None before its first epoch ends
    epochs: int


@dataclass(frozen=True)
class Ended:
    """A task that ended since the last poll: done, at its rung, failed or cancelled."""

    task_id: str
    how: str
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    """One poll of a wait's tasks."""

    at: float
    total: int
    counts: dict[str, int]  # State -> tasks, plus "cancelled": neither done nor failed nor held
    running: tuple[Running, ...]
    epochs_left: int
    rate: float | None  # epochs per second, measured; None until known

    @property
    def done(self) -> int:
        """Tasks this wait is over for: done, or stopped at the search's rung it waits for."""
        return self.counts.get(State.DONE, 0) + self.counts.get(AT_RUNG, 0)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left (an estimate), counted down since the poll; None while unknown."""
        if self.epochs_left <= 0:
            return 0.0
        if not self.rate:
            return None
        now = time.time() if now is None else now
        return max(self.epochs_left / self.rate - max(0.0, now - self.at), 0.0)


@dataclass
class Tracker:
    """Polls the tasks of a wait. `held`: whether a scheduler holds them (then a task it no
    longer holds that is not finished was cancelled); without, a pending task waits in
    this process's own runner."""

    paths: StudyPaths
    tasks: Sequence[Task]
    held: bool = False
    seen: list[tuple[float, int]] = field(default_factory=list)  # (time, epochs completed)
    last: dict[str, str] = field(default_factory=dict)  # task id -> what it was at the last poll
    finished: dict[str, int] = field(default_factory=dict)  # done task id -> its epochs (never re-read)

    def poll(self, view: Mapping[str, Held] | None = None, now: float | None = None) -> tuple[Snapshot, list[Ended]]:
        """The tasks' states now (`view`: what the backends hold, as service.held returns)."""
        now = time.time() if now is None else now
        counts: dict[str, int] = {s: 0 for s in (*State, "cancelled", AT_RUNG)}
        running: list[Running] = []
        ended: list[Ended] = []
        completed = left = 0
        seed = 0.0
        for task in self.tasks:
            tid = task.task_id
            if tid in self.finished:
                counts[State.DONE] += 1
                completed += self.finished[tid]
                continue
            st = task_state(self.paths, task, view or {})
            how = st.state
            tp = self.paths.task(tid)
            # A search's stop request (rung.json) ends this wait for the task at that epoch.
            target = min(task.epochs, stop_after(tp) or task.epochs)
            epoch = None if how == State.DONE else epochs_done(tp, st.epoch)
            if how == State.PENDING and target < task.epochs and (epoch or 0) >= target:
                how, st.detail = AT_RUNG, f"epoch {target}"
                self.finished[tid] = target
            elif how == State.PENDING and self.held and self.last.get(tid) in (State.QUEUED, State.RUNNING,
                                                                              "cancelled"):
                how = "cancelled"
            if how == State.DONE:
                self.finished[tid] = task.epochs
                completed += task.epochs
            else:
                done = epoch or 0
                completed += min(done, target)
                if how not in (State.FAILED, "cancelled", AT_RUNG):
                    left += max(target - done, 0)
                if how == State.RUNNING:
                    running.append(Running(tid, epoch, task.epochs))
                    seed += _own_rate(tp, task.epochs)
            counts[how] += 1
            if how in (State.DONE, State.FAILED, "cancelled", AT_RUNG) and self.last.get(tid) not in (None, how):
                ended.append(Ended(tid, how, st.detail))
            self.last[tid] = how
        rate = self._measure(now, completed)
        snap = Snapshot(now, len(self.tasks), counts, tuple(running), left, rate if rate else (seed or None))
        return snap, ended

    def _measure(self, now: float, completed: int) -> float | None:
        self.seen.append((now, completed))
        self.seen = [(t, c) for t, c in self.seen if now - t <= WINDOW_S] or self.seen[-1:]
        (t0, c0), (t1, c1) = self.seen[0], self.seen[-1]
        if c1 <= c0 or t1 <= t0:
            return None
        return (c1 - c0) / (t1 - t0)


def stop_after(tp: TaskPaths) -> int | None:
    """The epoch a search asked the task to stop after (its rung.json), or None."""
    try:
        stop = json.loads(tp.rung.read_text()).get("stop_after")
    except (OSError, ValueError, AttributeError):
        return None
    return stop if isinstance(stop, int) and not isinstance(stop, bool) and stop > 0 else None


def _own_rate(tp: TaskPaths, epochs: int) -> float:
    """A running task's epochs per second from its own records (metrics.jsonl's wall time
    at its last evaluated epoch): the estimate's seed before any epoch ends in the wait."""
    from hpcxfer.fileio import iter_jsonl

    last = None
    for last in iter_jsonl(tp.metrics):
        pass
    if not isinstance(last, dict):
        return 0.0
    epoch, wall = last.get("epoch"), last.get("wall_s")
    if not isinstance(epoch, int) or not isinstance(wall, (int, float)) or epoch <= 0 or not wall > 0:
        return 0.0
    return epoch / wall if epoch < epochs else 0.0
