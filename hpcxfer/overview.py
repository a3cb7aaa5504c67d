"""What `hpcxfer status` prints: an overview of a study of any size, and task rows.

The overview fits a screen whatever the study's size (a 1,200-task study included): the
counts by stage and sub-grid with a bar (as signac-flow's `flow status` does), then the
failed tasks first, each with the tail of its log, then what is running, each at its
epoch. Task rows (`--detailed`, `--state`, and after the overview when the output is not
a terminal) say for each task its epoch of epochs, the latest validation accuracy, its
wall time and host. Every string from a file is printed as text, never as markup.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.progress import read_mark
from hpcxfer.states import State
from hpcxfer.study import TaskState, task_progress
from hpcxfer.terminal import NARROW, Col, fit_table, glyphs_ok

log = logging.getLogger(__name__)

#: Order in which task rows are listed: what needs attention first.
ORDER = {State.FAILED: 0, State.RUNNING: 1, State.QUEUED: 2, State.PENDING: 3, State.PRUNED: 4, State.DONE: 5}
COLOUR = {State.DONE: "green", State.FAILED: "red", State.RUNNING: "cyan", State.QUEUED: "yellow",
          State.PENDING: "white", State.PRUNED: "magenta"}
#: A state's column header on a narrow terminal.
SHORT = {State.PENDING: "pend", State.QUEUED: "queue", State.RUNNING: "run", State.DONE: "done",
         State.FAILED: "fail", State.PRUNED: "prun"}
#: How much of the overview each part may take.
MAX_SUBGRIDS = 12
MAX_FAILED = 3
LOG_TAIL_LINES = 2
MAX_RUNNING = 5
#: Characters of one log line shown in the overview.
LOG_LINE_CHARS = 160


def subgrids(study: dict | None) -> dict[str, list[str]]:
    """sub-grid name -> its fine-tuning task ids, as study.json recorded them at submit
    ("subgrids": grid file -> [[name, ids], ...] in the grid's order, every file the study
    was submitted from, merged by name); {} for one sub-grid, or for a study written before sub-grids were recorded:
    the grid files themselves are never read again (moved or edited, they change nothing)."""
    out: dict[str, list[str]] = {}
    recorded = (study or {}).get("subgrids")
    for source in recorded.values() if isinstance(recorded, dict) else ():
        for pair in source if isinstance(source, list) else ():
            name, ids = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
            if isinstance(name, str) and isinstance(ids, list):
                out.setdefault(name, []).extend(t for t in ids if isinstance(t, str))
    return {name: list(dict.fromkeys(ids)) for name, ids in out.items()} if len(out) > 1 else {}


def bar(counts: Counter, total: int, width: int = 20, ascii_only: bool = False) -> Text:
    """A bar of done (green), failed (red), running (cyan) and the rest (dim), and the
    done percentage; `ascii_only`: in characters any stream can encode."""
    full, part, empty = ("#", "=", ".") if ascii_only else ("█", "▒", "░")
    text = Text()
    used = 0
    for state, char in ((State.DONE, full), (State.FAILED, full), (State.RUNNING, part)):
        n = round(width * counts.get(state, 0) / total) if total else 0
        n = min(n, width - used)
        text.append(char * n, style=COLOUR[state])
        used += n
    text.append(empty * (width - used), style="dim")
    pct = 100 * counts.get(State.DONE, 0) / total if total else 0
    text.append(f" {pct:3.0f}%")
    return text


def counts_table(console: Console, states: Sequence[TaskState], blocks: dict[str, list[str]]) -> Table:
    narrow = console.width < NARROW
    # pruned only where a search pruned something: a plain study's table is as it was
    shown = [s for s in State if s != State.PRUNED or any(st.state == State.PRUNED for st in states)]
    cols = [Col("stage / sub-grid", text=True, priority=9), Col("tasks", right=True, priority=8),
            *(Col(s.value, SHORT[s], right=True, priority=7 if s in (State.DONE, State.FAILED) else 6)
              for s in shown),
            Col("progress", priority=3)]
    by_id = {s.task_id: s for s in states}
    rows: list[list] = []

    def row(name: str, group: list[TaskState]) -> None:
        c = Counter(s.state for s in group)
        rows.append([name, len(group), *(c.get(s, 0) for s in shown),
                     bar(c, len(group), 10 if narrow else 20, not glyphs_ok(console))])

    for stage in dict.fromkeys(s.stage for s in states):
        row(stage or "?", [s for s in states if s.stage == stage])
        if stage == "finetune" and blocks:
            names = list(blocks)
            for name in names[:MAX_SUBGRIDS]:
                row(f"  {name}", [by_id[t] for t in dict.fromkeys(blocks[name]) if t in by_id])
            if len(names) > MAX_SUBGRIDS:
                rows.append([f"  ... and {len(names) - MAX_SUBGRIDS} more sub-grids", *[""] * (len(cols) - 1)])
    return fit_table(console, cols, rows, wide_box=box.SIMPLE_HEAD)


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` non-empty lines of a log, each cut to LOG_LINE_CHARS."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    tail = [ln.rstrip() for ln in data.splitlines() if ln.strip()][-lines:]
    return [ln if len(ln) <= LOG_LINE_CHARS else ln[:LOG_LINE_CHARS - 3] + "..." for ln in tail]


def fmt_epoch(p: dict) -> str:
    if p.get("epoch") is None:
        return ""
    return f"{p['epoch']}/{p['epochs']}" if p.get("epochs") else str(p["epoch"])


def fmt_acc(v) -> str:
    return "" if v is None else f"{100 * v:.1f} %"


def fmt_wall(seconds) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def epoch_now(paths: StudyPaths, st: TaskState, progress: dict) -> int | None:
    """A task's epoch: for a running one, progress.json's (written at every epoch's end)
    where it is ahead of the last evaluation."""
    mark = read_mark(paths.task(st.task_id).progress) if st.state == State.RUNNING else None
    known = [e for e in (progress.get("epoch"), mark.epoch if mark else None) if e is not None]
    return max(known) if known else None


def fmt_bytes(n: int) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (decimal units, as `df -H`)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def overview(console: Console, paths: StudyPaths, tasks: Sequence[Task], states: Sequence[TaskState], blocks: dict[str, list[str]],
             counts: dict[str, int], study_dir_arg: str, leftover_bytes: int = 0, search: Sequence = ()) -> list:
    """The renderables of the overview, in order; `leftover_bytes`: group checkpoints no
    unfinished member needs (a line when there are any); `search`: what a search shows of
    itself, after the counts."""
    out: list = []
    total = len(states)
    out.append(Text(f"{paths.name}: {total} tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                    + f"  ({paths.dir})"))
    out.append(counts_table(console, states, blocks))
    out.extend(search)
    task_of = {t.task_id: t for t in tasks}
    failed = [s for s in states if s.state == "failed"]
    if failed:
        out.append(Text(f"failed ({len(failed)}):", style="red"))
        for s in failed[:MAX_FAILED]:
            out.append(Text(f"  {s.task_id}", style="red") + Text(f" {one_line(s.detail)}"
                                                                  + (f" (log: {s.log})" if s.log else "")))
            for line in log_tail(s.log):
                out.append(Text(f"    | {line}", style="dim"))
        if len(failed) > MAX_FAILED:
            out.append(Text(f"  ... and {len(failed) - MAX_FAILED} more: "
                            f"hpcxfer status {study_dir_arg} --state failed"))
    running = [s for s in states if s.state == "running"]
    if running:
        out.append(Text(f"running ({len(running)}):", style="cyan"))
        for s in running[:MAX_RUNNING]:
            p = task_progress(paths, task_of[s.task_id], s)
            p["epoch"] = epoch_now(paths, s, p)
            bits = [f"epoch {fmt_epoch(p)}" if p["epoch"] is not None else "starting (no epoch finished yet)",
                    f"val acc {fmt_acc(p['val_acc'])}" if p["val_acc"] is not None else "",
                    fmt_wall(p["wall_s"]), f"on {p['host']}" if p["host"] else "",
                    s.extra.get("job", "")]
            out.append(Text(f"  {s.task_id}") + Text("  " + ", ".join(b for b in bits if b), style="dim"))
        if len(running) > MAX_RUNNING:
            out.append(Text(f"  ... and {len(running) - MAX_RUNNING} more: hpcxfer status {study_dir_arg} "
                            "--state running"))
    if leftover_bytes:
        out.append(Text(f"leftover group checkpoints: {fmt_bytes(leftover_bytes)} in {paths.groups_dir} that no "
                        "unfinished task needs (the next submit removes them unless runtime.keep_checkpoints)"))
    out.append(Text(f"every task: hpcxfer status {study_dir_arg} --detailed (--state STATE, --limit N)", style="dim"))
    return out


def task_table(console: Console, paths: StudyPaths, tasks: Sequence[Task], states: Sequence[TaskState],
               limit: int | None) -> Table:
    """One row per task, failed first, then running, queued, pending, pruned and done, each in
    index order; at most `limit` rows. Ids are never cut: a narrow terminal drops other
    columns first."""
    task_of = {t.task_id: t for t in tasks}
    ordered = sorted(states, key=lambda s: ORDER.get(s.state, 9))
    shown = ordered if limit is None else ordered[:limit]
    grouped = any(s.group for s in states)
    cols = [Col("task_id", priority=9), Col("stage", priority=3), Col("state", priority=9),
            Col("epoch", right=True, priority=8), Col("val acc", right=True, priority=7),
            Col("wall", right=True, priority=5), Col("host", text=True, priority=2),
            *([Col("group", priority=1)] if grouped else []), Col("detail", text=True, priority=4)]
    rows = []
    for s in shown:
        p = task_progress(paths, task_of[s.task_id], s)
        p["epoch"] = epoch_now(paths, s, p)
        detail = s.detail + (f" (log: {s.log})" if s.state == State.FAILED and s.log else "")
        rows.append([s.task_id, s.stage, Text(s.state, style=COLOUR.get(s.state, "white")), fmt_epoch(p),
                     fmt_acc(p["val_acc"]), fmt_wall(p["wall_s"]), p["host"] or "",
                     *([s.group or ""] if grouped else []), detail])
    more = f"... and {len(ordered) - limit} more (--limit N)" if limit is not None and len(ordered) > limit else None
    return fit_table(console, cols, rows, caption=more, wide_box=box.SIMPLE_HEAD)
