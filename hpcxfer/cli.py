"""The command line (SPEC section 2). One handler turns every HpcxferError into one line
and exit status 2; --debug shows the traceback instead."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hpcxfer.errors import ConfigError, HpcxferError

console = Console()
err_console = Console(stderr=True)


# ---------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    from hpcxfer.grid import expand, load_grid
    from hpcxfer.grid.expansion import expand_by_block

    grid = load_grid(args.grid)
    tasks = expand(grid)
    if args.json:
        for t in tasks:
            sys.stdout.write(json.dumps(t.to_dict(), sort_keys=True) + "\n")
        return 0
    _task_table(tasks, f"{grid.study}: {len(tasks)} tasks", limit=args.limit)
    counts = Table(title="tasks by stage and sub-grid")
    counts.add_column("stage / sub-grid")
    counts.add_column("tasks", justify="right")
    for stage, n in Counter(t.stage for t in tasks).items():
        counts.add_row(stage, str(n))
    blocks = expand_by_block(grid)
    if len(blocks) > 1:
        for name, block in blocks:
            counts.add_row(Text(f"  finetune: {name}"), str(len({t.task_id for t in block})))
    console.print(counts)
    _cost_table(grid)
    return 0


def _cost_table(grid) -> None:
    from hpcxfer.grid import cost

    try:
        rows = cost.price_study(grid)
    except cost.UnknownSize as e:
        console.print(f"no cost estimate: {e}", highlight=False, markup=False)
        return
    queues = list(rows[-1][1].su)
    table = Table(title="estimated cost, one GPU per task (GPU-hours and Gadi SU per queue)")
    table.add_column("stage / sub-grid", max_width=30, overflow="ellipsis", no_wrap=True)
    for col in ("tasks", "images", *(f"{q}\n{u}" for q in queues for u in ("GPU-h", "SU"))):
        table.add_column(Text(col), justify="right", no_wrap=True, min_width=max(map(len, col.split("\n"))))
    for name, c in rows:
        table.add_row(Text(name), str(c.tasks), cost.fmt_images(c.images),
                      *(cost.fmt_number(v) for q in queues for v in (c.gpu_hours[q], c.su[q])))
    console.print(table)
    for line in cost.assumptions(grid):
        console.print(f"  {line}", highlight=False, markup=False)
    console.print(cost.summary_line(rows[-1][1]), highlight=False)


def _task_table(tasks, title: str, limit: int) -> None:
    table = Table(title=title)
    for col in ("task_id", "stage", "split", "per class", "n", "h", "d", "f", "epochs", "batch"):
        table.add_column(col, justify="left" if col in ("task_id", "stage") else "right",
                         no_wrap=col == "task_id")
    for t in tasks[:limit]:
        table.add_row(t.task_id, t.stage, str(t.split), str(t.examples_per_class), str(t.transfer_layers),
                      str(t.high_lr_layers), str(t.initial_decay_epochs), str(t.frozen_layers),
                      str(t.epochs), str(t.batch_size))
    if len(tasks) > limit:
        table.caption = f"... and {len(tasks) - limit} more (--limit N, or --json for all)"
    console.print(table)


# ---------------------------------------------------------------- submit
def cmd_submit(args: argparse.Namespace) -> int:
    from hpcxfer.backends import get_backend
    from hpcxfer.grid import cost, expand, load_grid
    from hpcxfer.grid.groups import units
    from hpcxfer.grid.load import checked_root
    from hpcxfer.locks import submit_lock
    from hpcxfer.study import study_paths, study_states, write_groups, write_study

    grid = load_grid(args.grid)
    backend = get_backend(args.backend)
    root = checked_root(grid, args.root, backend.name)  # before anything is written
    tasks = expand(grid)
    try:
        estimate = cost.summary_line(cost.price_study(grid)[-1][1])
    except cost.UnknownSize as e:
        estimate = f"no cost estimate: {e}"
    from hpcxfer.data import check_data  # imports torch: after the grid is known to be good

    check_data(grid._source, grid.data, tasks)
    console.print(estimate, highlight=False, markup=False)
    paths = study_paths(grid, root)
    # One submit at a time decides and records what to submit (two would each submit all).
    with submit_lock(paths) as lock:
        write_study(paths, grid, tasks)

        wanted = {t.task_id for t in tasks}
        held = _held(paths)
        states = {s.task_id: s for s in study_states(paths, held) if s.task_id in wanted}
        todo = [t for t in tasks if states[t.task_id].state in ("pending", "failed")]
        # Protocol groups are formed from what is left to run: a finished member is never rerun.
        todo_units, groups = units(todo, grid.runtime.group_max)
        write_groups(paths, groups)
        by_state = Counter(s.state for s in states.values())
        grouped = f" ({len(todo_units)} workers, {len(groups)} of them protocol groups)" if groups else ""
        console.print(f"study {paths.dir}: {len(tasks)} tasks; " + ", ".join(
            f"{n} {s}" for s, n in sorted(by_state.items())) + f"; submitting {len(todo)} to {backend.name}"
            + grouped, markup=False, highlight=False)

        if args.wait and backend.name == "local" and todo:
            sub = _submit_local_with_progress(backend, paths, grid, todo_units, recorded=lock.release)
        else:
            sub = backend.submit(paths, grid, todo_units, dry_run=args.dry_run)
    if args.dry_run:
        for script in sub.scripts:
            console.print(f"# {script}\n{Path(script).read_text()}", markup=False, highlight=False, soft_wrap=True)
        for cmd in sub.commands:
            console.print(cmd, markup=False, highlight=False, soft_wrap=True)
        console.print(f"dry run: {len(todo)} tasks would be submitted; nothing was submitted")
        return 0
    if sub.job_ids:
        console.print(f"submitted {len(sub.tasks)} tasks as {', '.join(sub.job_ids)}", markup=False)
    if args.wait:
        if backend.name != "local":
            _wait_for_scheduler(paths, wanted)
        states = study_states(paths, _held(paths))
        bad = [s for s in states if s.task_id in wanted and s.state != "done"]
        for s in bad:
            console.print(Text(s.task_id, style="red") + Text(f" {s.state}: {s.detail} {s.log or ''}"))
        return 1 if bad else 0
    return 0


def _wait_for_scheduler(paths, wanted: set[str], poll_s: float = 10.0) -> None:
    """Until the scheduler holds none of the study's tasks, with a line of counts."""
    import time

    from hpcxfer.study import study_states

    with console.status("waiting for the scheduler") as line:
        while True:
            counts = Counter(s.state for s in study_states(paths, _held(paths)) if s.task_id in wanted)
            line.update("waiting for the scheduler: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
            if not counts.get("queued") and not counts.get("running"):
                return
            time.sleep(poll_s)


def _submit_local_with_progress(backend, paths, grid, todo, recorded=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("workers", total=len(todo), detail="")

        def on_change(counts: dict) -> None:
            finished = sum(counts.get(k, 0) for k in ("done", "failed", "skipped", "interrupted"))
            detail = f"{counts.get('running', 0)} running"
            for k in ("failed", "skipped"):
                if counts.get(k):
                    detail += f", [red]{counts[k]} {k}[/red]"
            progress.update(bar, completed=finished, detail=detail)

        return backend.submit(paths, grid, todo, wait=True, on_change=on_change, recorded=recorded)


def _held(paths) -> dict[str, dict]:
    """task id -> what the backend that last submitted it says: queued, running or (ended
    by the scheduler) failed. Only backends this study has used are asked."""
    from hpcxfer.backends import BACKENDS

    held: dict[str, dict] = {}
    for name, cls in BACKENDS.items():
        if not paths.backend_dir(name).is_dir():
            continue
        backend = cls()
        view = backend.view(paths) if hasattr(backend, "view") else {t: {"state": "queued"} for t in backend.held(paths)}
        held.update(view)
    return held


# ---------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from hpcxfer.grid.task import Task
    from hpcxfer.layout import StudyPaths
    from hpcxfer.study import STATES, read_index, study_states

    paths = StudyPaths.existing(args.study_dir)
    index, problems = read_index(paths)
    states = study_states(paths, _held(paths), [Task.from_dict(d) for d in index])
    for line in problems:  # a damaged line is said, and the rest of the study still shown
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    counts = {s: 0 for s in STATES}
    counts.update(Counter(s.state for s in states))
    if args.json:
        sys.stdout.write(json.dumps({"counts": counts, "tasks": [s.to_dict() for s in states]}) + "\n")
        return 0
    table = Table(title=Text(f"{paths.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)))
    grouped = any(s.group for s in states)
    for col in ("task_id", "stage", "state", "epoch", *(["group"] if grouped else []), "detail"):
        table.add_column(col, no_wrap=col in ("task_id", "group"))
    colour = {"done": "green", "failed": "red", "running": "cyan", "queued": "yellow"}
    for s in states:
        detail = s.detail + (f" (log: {s.log})" if s.state == "failed" else "")
        table.add_row(Text(s.task_id), s.stage, Text(s.state, style=colour.get(s.state, "white")),
                      "" if s.epoch is None else str(s.epoch), *([Text(s.group or "")] if grouped else []),
                      Text(detail))
    console.print(table)
    return 0


# ---------------------------------------------------------------- collect, report
def _collect(args: argparse.Namespace):
    from hpcxfer.collect.aggregate import parse_by
    from hpcxfer.collect.build import collect
    from hpcxfer.layout import StudyPaths

    return collect(StudyPaths.existing(args.study_dir), parse_by(getattr(args, "by", None)))


def _print_summary(collected) -> None:
    """What was read and what was skipped, after every view has read what it needs."""
    for line in collected.summary():
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def _check_target(value: str | None, option: str, folder: bool = False) -> None:
    """Refuse an --out that is a folder, or a --plots folder that is a file, before any work."""
    if value is None:
        return
    path = Path(value)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(None, option, f"{value} is a file; name a folder for the figures")
    if not folder and path.is_dir():
        raise ConfigError(None, option, f"{value} is a folder; name a file")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(None, option, f"cannot write {value}: {parent} is not a folder you can write to")


def _write_out(out: str, data: bytes) -> None:
    from hpcxfer.fileio import atomic_write_bytes

    try:
        atomic_write_bytes(Path(out), data)
    except OSError as e:
        raise ConfigError(None, "--out", f"cannot write {out}: {e.strerror or e}") from None
    err_console.print(f"wrote {out}", highlight=False, markup=False)


def cmd_collect(args: argparse.Namespace) -> int:
    from hpcxfer.collect import render
    from hpcxfer.collect.build import build_views, parse_views

    names = parse_views(args.view)
    if args.format == "csv" and len(names) != 1:
        raise ConfigError(None, "--format", "csv holds one view", "name one with --view, or use json or markdown")
    _check_target(args.out, "--out")
    _check_target(args.plots, "--plots", folder=True)
    collected = _collect(args)
    asked = {n.strip() for v in args.view or [] for n in v.split(",")}
    views = build_views(collected, names, explicit="all" not in asked, jobs=args.jobs)
    if args.plots:
        from hpcxfer.collect.figures import paper_figures, write_figures

        figures, left_out = paper_figures(collected.protocol_cells)
        try:
            written = write_figures(figures, Path(args.plots))
        except OSError as e:
            raise ConfigError(None, "--plots", f"cannot write into {args.plots}: {e.strerror or e}") from None
        for path in written:
            err_console.print(f"wrote {path}", highlight=False, markup=False)
        for line in left_out:
            err_console.print(line, highlight=False, markup=False)
    _print_summary(collected)
    if args.format == "table" and not args.out:
        for view in views:
            console.print(render.rich_table(view))
        return 0
    summary = {"notes": collected.summary(), "skipped": collected.records.skipped.to_dict()}
    text = {"csv": render.to_csv, "markdown": render.to_markdown, "table": render.to_markdown,
            "json": lambda v: render.to_json(v, summary)}[args.format](views)
    if args.out:
        _write_out(args.out, text.encode())
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpcxfer.collect.build import ALL, build_views
    from hpcxfer.collect.figures import paper_figures
    from hpcxfer.collect.html import report_html

    _check_target(args.out, "--out")
    collected = _collect(args)
    views = build_views(collected, ALL, explicit=False)
    figures, left_out = paper_figures(collected.protocol_cells)
    paths = collected.records.paths
    _print_summary(collected)
    html = report_html(paths.name, str(paths.dir), collected.dataset, collected.summary(), views, figures, left_out)
    _write_out(args.out or str(paths.dir / "report.html"), html.encode())
    return 0


# ---------------------------------------------------------------- run-task, cancel, init
def cmd_run_task(args: argparse.Namespace) -> int:
    from hpcxfer.extras import require_train

    require_train("hpcxfer run-task")  # before the worker: one line, not an ImportError
    from hpcxfer.worker.main import run_task

    return run_task(args.study_dir, args.task)


def cmd_init(args: argparse.Namespace) -> int:
    """Write a shipped example's grid files into DIR; nothing is overwritten without --force."""
    from hpcxfer.fileio import atomic_write_bytes
    from hpcxfer.shipped import example_files

    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        raise ConfigError(None, "DIR", f"{args.dir} is a file; name a folder for the example")
    files = [(target / rel, data) for rel, data in example_files(args.example)]
    if not args.force:
        present = [path for path, _ in files if path.exists() or path.is_symlink()]
        if present:
            more = f" (and {len(present) - 1} more)" if len(present) > 1 else ""
            raise ConfigError(present[0], None, f"exists{more}; nothing written", "--force overwrites")
    for path, data in files:
        if path.is_dir():
            raise ConfigError(path, None, "is a folder; nothing of the example can be written there")
    for path, data in files:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as e:
            raise ConfigError(path, None, f"cannot write: {e.strerror or e}") from None
        console.print(Text(f"wrote {path}"))
    console.print(Text(f"next: hpcxfer plan {files[0][0]}"))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcxfer.backends import BACKENDS
    from hpcxfer.layout import StudyPaths

    paths = StudyPaths.existing(args.study_dir)
    cancelled = [j for name, cls in BACKENDS.items() if paths.backend_dir(name).is_dir()
                 for j in cls().cancel(paths)]
    console.print(f"cancelled {', '.join(cancelled)}" if cancelled else "nothing queued to cancel", markup=False)
    return 0


# ---------------------------------------------------------------- parser
def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a positive whole number")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), exit status 2 as before."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from hpcxfer import __version__
    from hpcxfer.collect.render import FORMATS

    parser = _Parser(prog="hpcxfer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpcxfer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="expand and validate a grid; table of tasks and counts")
    p.add_argument("grid")
    p.add_argument("--json", action="store_true", help="one JSON object per task per line")
    p.add_argument("--limit", type=_positive, default=40, help="task rows to show (default 40)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("submit", help="submit every task not done and not queued")
    p.add_argument("grid")
    p.add_argument("--backend", choices=None, help="local, slurm, pbs or gadi (default: detected)")
    p.add_argument("--root", help="parent folder of the study directory (overrides the grid's root)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    p.add_argument("--wait", action="store_true", help="stay until the study is done, showing progress")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="state of every task")
    p.add_argument("study_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("collect", help="the study's tables (and the paper's figures with --plots)")
    p.add_argument("study_dir")
    p.add_argument("--view", action="append", metavar="NAME",
                   help="cells (default), table1, table2, compare, paper, incomplete, curves (reads every "
                        "metrics record), or all; repeat or comma-separate for several")
    p.add_argument("--by", metavar="AXES", help="comma-separated task fields that make a cell (default: the "
                   "protocol and every setting except split and seed); the rest are averaged over")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--out", help="write to this file instead of the terminal")
    p.add_argument("--plots", metavar="DIR", help="write the paper's Figs. 1-6 as PNG and SVG into DIR")
    p.add_argument("--jobs", type=_positive, help="processes that read metrics records (default: one per core)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("report", help="one self-contained HTML file with every table and figure")
    p.add_argument("study_dir")
    p.add_argument("--out", help="the HTML file (default: STUDY_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run-task", help="run one task (what an array task runs)")
    p.add_argument("study_dir")
    p.add_argument("task", help="index in tasks.jsonl or task id")
    p.set_defaults(func=cmd_run_task)

    p = sub.add_parser("cancel", help="cancel what the study has queued")
    p.add_argument("study_dir")
    p.set_defaults(func=cmd_cancel)

    from hpcxfer.shipped import EXAMPLES

    p = sub.add_parser("init", help="write a shipped example grid (quickstart, plested2019) into a folder")
    p.add_argument("example", choices=sorted(EXAMPLES))
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where to write it (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=cmd_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except HpcxferError as e:
        if args.debug:
            raise
        # User strings (paths, keys, a failed task's error) are text, never rich markup.
        err_console.print(Text("error:", style="red") + Text(f" {e}"), highlight=False, soft_wrap=True)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
