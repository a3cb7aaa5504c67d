"""How `submit` shows itself, and what `submit --wait` prints while it waits.

The wait counts tasks, never workers (a protocol group is one worker for many tasks), and
a bar shows only done tasks as done: failed and cancelled ones are counted beside it. The
time left is labelled as an estimate (hpcxfer/progress.py measures it) and moves with the
clock. On a terminal a live bar, with each running task on a line of its own at its
epoch; off a terminal (nohup, CI, a driver job's log) one plain line at a steady interval
(`HPCXFER_PROGRESS_S` seconds, default 60) and one line per task that ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from hpcxfer.layout import StudyPaths
from hpcxfer.progress import AT_RUNG, Ended, Snapshot, Tracker
from hpcxfer.states import State
from hpcxfer.study import load_tasks
from hpcxfer.terminal import NARROW, duration

#: Seconds between two plain progress lines off a terminal (the environment variable wins).
PLAIN_EVERY_S = 60.0
PLAIN_ENV = "HPCXFER_PROGRESS_S"
#: Seconds between two reads of the study's files while waiting.
READ_S = 3.0
#: Running tasks shown, one a line, under the bar.
MAX_RUNNING = 3


def plain_every() -> float:
    value = os.environ.get(PLAIN_ENV, "")
    try:
        return max(0.05, float(value)) if value else PLAIN_EVERY_S
    except ValueError:
        return PLAIN_EVERY_S


def eta_text(snap: Snapshot | None, now: float | None = None) -> str:
    if snap is None:
        return "est. time left: measuring"
    eta = snap.eta(now)
    if eta is None:
        return "est. time left: measuring"
    return f"est. {duration(eta)} left"


def counts_text(snap: Snapshot) -> str:
    """`3 running, 2 queued, 1 failed, 4 cancelled`: what is not done, in words."""
    names = ((State.RUNNING, "running"), (State.QUEUED, "queued"), (State.PENDING, "waiting"),
             (State.FAILED, "failed"), ("cancelled", "cancelled"))
    words = ", ".join(f"{snap.counts[k]} {word}" for k, word in names if snap.counts.get(k))
    rung = snap.counts.get(AT_RUNG)
    return f"{rung} of them at their rung" + (f"; {words}" if words else "") if rung else words


def running_lines(snap: Snapshot, limit: int = MAX_RUNNING) -> list[str]:
    lines = []
    for r in snap.running[:limit]:
        at = "starting (no epoch finished yet)" if r.epoch is None else f"epoch {r.epoch}/{r.epochs}"
        lines.append(f"  {r.task_id}  {at}")
    if len(snap.running) > limit:
        lines.append(f"  ... and {len(snap.running) - limit} more running")
    return lines


def ended_line(e: Ended) -> str:
    if e.how == AT_RUNG:
        return f"{e.task_id} stopped at its rung ({e.detail})"
    detail = f": {' '.join(e.detail.split())[:200]}" if e.how == State.FAILED and e.detail else ""
    return f"{e.how} {e.task_id}{detail}"


class _Eta(ProgressColumn):
    """The estimate, computed at each refresh so that it counts down between polls."""

    def __init__(self, latest: Callable[[], Snapshot | None]):
        super().__init__()
        self.latest = latest

    def render(self, task) -> Text:
        return Text(eta_text(self.latest()))


class _Bar(Progress):
    """rich's progress with the counts and each running task on lines of their own, so
    that no task id is cut on a narrow terminal."""

    def __init__(self, console: Console, latest: Callable[[], Snapshot | None]):
        self.latest = latest  # before rich's own start-up, which may render
        narrow = console.width < NARROW
        super().__init__(TextColumn("tasks"), BarColumn(bar_width=20 if narrow else 40),
                         TextColumn("{task.completed}/{task.total} done"), TimeElapsedColumn(), _Eta(latest),
                         console=console)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        snap = self.latest()
        if snap is not None:
            words = counts_text(snap)
            if words:
                yield Text(f"  {words}")
            for line in running_lines(snap):
                yield Text(line, style="dim", overflow="fold")


class SubmitReport:
    """How a submit shows itself on `console`, its warnings on `err` (hpcxfer/service.py
    `Reporter`)."""

    def __init__(self, console: Console, err: Console | None = None):
        self.console, self.err = console, err or console

    def say(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True)

    def estimate(self, line: str) -> None:
        self.say(line)

    def plan(self, plan) -> None:
        for line in (line for state in plan.states.values() for line in state.warnings()):
            self.err.print(Text(f"warning: {line}"), soft_wrap=True)  # an unreadable record: not done
        grouped = f" ({len(plan.units)} workers, {len(plan.groups)} of them protocol groups)" if plan.groups else ""
        self.say(f"study {plan.paths.dir}: {len(plan.tasks)} tasks; "
                 + ", ".join(f"{n} {s}" for s, n in sorted(plan.counts().items()))
                 + f"; submitting {len(plan.todo)} to {plan.backend}" + grouped)

    def submitted(self, sub) -> None:
        if sub.job_ids:
            from hpcxfer.terminal import id_ranges

            self.say(f"submitted {len(sub.tasks)} tasks as {', '.join(id_ranges(sub.job_ids))}")

    @contextmanager
    def watch(self, kind: str, paths: StudyPaths, wanted: set[str], total: int) -> Iterator[Callable[..., None]]:
        tasks = [t for t in load_tasks(paths) if t.task_id in wanted]
        with Waiting(self.console, Tracker(paths, tasks, held=kind == "tasks")) as waiting:
            yield waiting.changed


class Waiting:
    """The display of one wait: a thread reads the study every READ_S seconds (sooner
    when told something changed) and shows what it found."""

    def __init__(self, console: Console, tracker: Tracker, every_s: float | None = None):
        self.console, self.tracker = console, tracker
        self.every_s = plain_every() if every_s is None else every_s
        self.live = console.is_terminal
        self.view: Mapping[str, dict] | None = None
        self.snap: Snapshot | None = None
        self.started = time.monotonic()
        self.said_at = -float("inf")
        self.stop, self.poke = threading.Event(), threading.Event()
        self.bar: _Bar | None = None
        self.thread = threading.Thread(target=self._loop, name="hpcxfer-wait", daemon=True)

    def changed(self, counts: dict | None = None, view: Mapping[str, dict] | None = None) -> None:
        """Something changed (a worker ended, a poll of the schedulers): read the study now."""
        if view is not None:
            self.view = view
        self.poke.set()

    def __enter__(self) -> Self:
        if self.live:
            self.bar = _Bar(self.console, lambda: self.snap)
            self.bar.start()
            self.bar_id = self.bar.add_task("tasks", total=len(self.tracker.tasks))
        self._read()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.poke.set()
        self.thread.join()
        self._read(final=True)
        if self.bar is not None:
            self.bar.stop()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.poke.wait(READ_S)
            self.poke.clear()
            if not self.stop.is_set():
                self._read()

    def _read(self, final: bool = False) -> None:
        snap, ended = self.tracker.poll(self.view)
        self.snap = snap
        if self.bar is not None:
            self.bar.update(self.bar_id, completed=snap.done)
            for e in ended:
                if e.how not in (State.DONE, AT_RUNG):  # on a terminal the bar counts the done ones
                    self.bar.console.print(Text(ended_line(e), style="red" if e.how == State.FAILED else "yellow"),
                                           soft_wrap=True)
            return
        for e in ended:
            self.console.print(Text(f"{_clock()} {ended_line(e)}"), soft_wrap=True)
        now = time.monotonic()
        if final or now - self.said_at >= self.every_s:
            self.said_at = now
            self.console.print(Text(self.line(snap, final)), soft_wrap=True)
            for line in running_lines(snap) if not final else []:
                self.console.print(Text(f"{_clock()} {line}"), soft_wrap=True)

    def line(self, snap: Snapshot, final: bool = False) -> str:
        """One plain progress line."""
        words = counts_text(snap)
        left = "; the wait is over" if final else f"; {eta_text(snap)}"
        return (f"{_clock()} tasks: {snap.done}/{snap.total} done" + (f", {words}" if words else "")
                + f"; elapsed {duration(time.monotonic() - self.started)}" + left)


def _clock() -> str:
    return time.strftime("%H:%M:%S")
