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
from rich.table import Table
from rich.text import Text

from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.study import STATES, TaskState, task_progress

log = logging.getLogger(__name__)

#: Order in which task rows are listed: what needs attention first.
ORDER = {"failed": 0, "running": 1, "queued": 2, "pending": 3, "done": 4}
COLOUR = {"done": "green", "failed": "red", "running": "cyan", "queued": "yellow", "pending": "white"}
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


def bar(counts: Counter, total: int, width: int = 20) -> Text:
    """A bar of done (green), failed (red), running (cyan) and the rest (dim), and the
    done percentage."""
    text = Text()
    used = 0
    for state, char in (("done", "█"), ("failed", "█"), ("running", "▒")):
        n = round(width * counts.get(state, 0) / total) if total else 0
        n = min(n, width - used)
        text.append(char * n, style=COLOUR[state])
        used += n
    text.append("░" * (width - used), style="dim")
    pct = 100 * counts.get("done", 0) / total if total else 0
    text.append(f" {pct:3.0f}%")
    return text


def counts_table(states: Sequence[TaskState], blocks: dict[str, list[str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=None)
    table.add_column("stage / sub-grid", no_wrap=True, max_width=40, overflow="ellipsis")
    for col in ("tasks", *STATES):
        table.add_column(col, justify="right")
    table.add_column("progress", no_wrap=True)
    by_id = {s.task_id: s for s in states}

    def row(name: str, group: list[TaskState]) -> None:
        c = Counter(s.state for s in group)
        table.add_row(Text(name), str(len(group)), *(str(c.get(s, 0)) for s in STATES), bar(c, len(group)))

    for stage in dict.fromkeys(s.stage for s in states):
        row(stage or "?", [s for s in states if s.stage == stage])
        if stage == "finetune" and blocks:
            names = list(blocks)
            for name in names[:MAX_SUBGRIDS]:
                row(f"  {name}", [by_id[t] for t in dict.fromkeys(blocks[name]) if t in by_id])
            if len(names) > MAX_SUBGRIDS:
                table.add_row(Text(f"  ... and {len(names) - MAX_SUBGRIDS} more sub-grids"))
    return table


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
    return [ln if len(ln) <= LOG_LINE_CHARS else ln[:LOG_LINE_CHARS - 1] + "…" for ln in tail]


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
    return text if len(text) <= limit else text[:limit - 1] + "…"


def overview(paths: StudyPaths, tasks: Sequence[Task], states: Sequence[TaskState], blocks: dict[str, list[str]],
             counts: dict[str, int], study_dir_arg: str) -> list:
    """The renderables of the overview, in order."""
    out: list = []
    total = len(states)
    out.append(Text(f"{paths.name}: {total} tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                    + f"  ({paths.dir})"))
    out.append(counts_table(states, blocks))
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
            bits = [f"epoch {fmt_epoch(p)}" if p["epoch"] is not None else "starting",
                    f"val acc {fmt_acc(p['val_acc'])}" if p["val_acc"] is not None else "",
                    fmt_wall(p["wall_s"]), f"on {p['host']}" if p["host"] else "",
                    s.extra.get("job", "")]
            out.append(Text(f"  {s.task_id}") + Text("  " + ", ".join(b for b in bits if b), style="dim"))
        if len(running) > MAX_RUNNING:
            out.append(Text(f"  ... and {len(running) - MAX_RUNNING} more: hpcxfer status {study_dir_arg} "
                            "--state running"))
    out.append(Text(f"every task: hpcxfer status {study_dir_arg} --detailed (--state STATE, --limit N)", style="dim"))
    return out


def task_table(paths: StudyPaths, tasks: Sequence[Task], states: Sequence[TaskState], limit: int | None) -> Table:
    """One row per task, failed first, then running, queued, pending and done, each in
    index order; at most `limit` rows."""
    task_of = {t.task_id: t for t in tasks}
    ordered = sorted(states, key=lambda s: ORDER.get(s.state, 9))
    shown = ordered if limit is None else ordered[:limit]
    grouped = any(s.group for s in states)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # Ids are never cut: a narrow terminal folds them, a pipe gets them whole.
    table.add_column("task_id", no_wrap=True, overflow="fold", min_width=12)
    for col in ("stage", "state", "epoch", "val acc", "wall", "host", *(["group"] if grouped else []), "detail"):
        table.add_column(col, justify="right" if col in ("epoch", "val acc", "wall") else "left",
                         no_wrap=col in ("state", "epoch", "val acc", "wall"), overflow="fold")
    for s in shown:
        p = task_progress(paths, task_of[s.task_id], s)
        detail = s.detail + (f" (log: {s.log})" if s.state == "failed" and s.log else "")
        table.add_row(Text(s.task_id), Text(s.stage), Text(s.state, style=COLOUR.get(s.state, "white")),
                      fmt_epoch(p), fmt_acc(p["val_acc"]), fmt_wall(p["wall_s"]), Text(p["host"] or ""),
                      *([Text(s.group or "")] if grouped else []), Text(detail))
    if limit is not None and len(ordered) > limit:
        table.caption = f"... and {len(ordered) - limit} more (--limit N)"
    return table
