"""The command line (docs/design.md §2). One handler turns every HpcxferError into one line
and exit status 2; --debug (before or after the subcommand) shows the traceback instead.
It renders what the use cases in hpcxfer/service.py return; its arguments are parsed by
hpcxfer/arguments.py
(docs/design.md §7).

Output is for terminals and pipes alike: piped, tables take their natural width (rich would
crop them to 80 columns), and a reader that closes the pipe early (`| head`) ends the
command quietly with status 141."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from hpcxfer.arguments import build_parser
from hpcxfer.errors import ConfigError, HpcxferError
from hpcxfer.terminal import Col, fit_table, id_ranges, make_console, plain_streams

if TYPE_CHECKING:
    from hpcxfer.fileio import Output

console = make_console()
err_console = make_console(stderr=True)


# ---------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    from hpcxfer import service

    planned = service.plan(args.grid)
    tasks = planned.tasks
    if args.json:
        for t in tasks:
            sys.stdout.write(json.dumps(t.to_dict(), sort_keys=True) + "\n")
        return 0
    _task_table(tasks, f"{planned.grid.study}: {len(tasks)} tasks", limit=args.limit)
    rows = [[stage, str(n)] for stage, n in Counter(t.stage for t in tasks).items()]
    if len(planned.blocks) > 1:
        rows += [[f"  finetune: {name}", str(len({t.task_id for t in block}))] for name, block in planned.blocks]
    console.print(fit_table(console, [Col("stage / sub-grid", text=True), Col("tasks", right=True)], rows,
                            title="tasks by stage and sub-grid",
                            caption="a task two sub-grids share counts in each" if len(planned.blocks) > 1 else None))
    _cost_table(planned)
    if planned.grid.search is not None:  # a search priced next to the full grid
        from hpcxfer.tune.render import search_lines
        from hpcxfer.tune.settings import plan_search
        console.print("\n".join(search_lines(plan_search(planned.grid, planned.tasks))), highlight=False, markup=False)
    for line in planned.warnings:
        console.print(Text(f"warning: {line}", style="yellow"))
    return 0


def _cost_table(planned) -> None:
    from hpcxfer.service import fmt_images, fmt_number

    rows = planned.cost_rows
    if rows is None:
        console.print(planned.summary(), highlight=False, markup=False)
        return
    queues = list(rows[-1][1].su)
    # Narrow, a queue is named without its prefix (volta, a100, hopper) so that all of them fit.
    cols = [Col("stage / sub-grid", text=True), Col("tasks", right=True, priority=4),
            Col("images", right=True, priority=3)]
    for q in queues:
        short = q.removeprefix("gpu").removeprefix("dgx")
        cols += [Col(f"{q} {u}", f"{short} {u}", right=True, priority=6 if u == "SU" else 5) for u in ("GPU-h", "SU")]
    cells = [[name, str(c.tasks), fmt_images(c.images), *(fmt_number(v) for q in queues
                                                         for v in (c.gpu_hours[q], c.su[q]))] for name, c in rows]
    console.print(fit_table(console, cols, cells,
                            title="estimated cost, one GPU per task (GPU-hours and Gadi SU per queue)"))
    for note in planned.row_notes():
        console.print(f"  {note}", highlight=False, markup=False)
    for line in planned.assumptions():
        console.print(f"  {line}", highlight=False, markup=False)
    console.print(planned.summary(), highlight=False, markup=False)


def _task_table(tasks, title: str, limit: int) -> None:
    cols = [Col("task_id", priority=9), Col("stage", priority=2), Col("split", right=True, priority=7),
            Col("seed", right=True, priority=3), Col("per class", "x/class", right=True, priority=7),
            *(Col(c, right=True, priority=6) for c in ("n", "h", "d", "f")),
            Col("epochs", right=True, priority=5), Col("batch", right=True, priority=4)]
    # A pre-training has no protocol: its n, h, d, f are blank, not the defaults it carries.
    rows = [[t.task_id, t.stage, t.split, t.seed, t.examples_per_class,
             *((t.transfer_layers, t.high_lr_layers, t.initial_decay_epochs, t.frozen_layers)
               if t.stage == "finetune" else ("",) * 4), t.epochs, t.batch_size] for t in tasks[:limit]]
    more = f"... and {len(tasks) - limit} more (--limit N, or --json for all)" if len(tasks) > limit else None
    console.print(fit_table(console, cols, rows, title=title, caption=more))


# ---------------------------------------------------------------- tune
def cmd_tune(args: argparse.Namespace) -> int:
    from hpcxfer.tune.render import outcome_lines, search_lines, started_lines
    from hpcxfer.tune.settings import plan_file

    planned = plan_file(args.grid)
    console.print("\n".join(search_lines(planned)), highlight=False, markup=False)
    from hpcxfer.tune.promote import begin, preview, start

    if args.dry_run:
        console.print("\n".join(preview(args.grid, args.backend, args.root)), highlight=False, markup=False)
        return 0
    from hpcxfer.tune.drive import run
    from hpcxfer.watch import SubmitReport

    req, search = begin(args.grid, args.backend, args.root)
    report = SubmitReport(console, err_console)
    if not args.wait:
        console.print("\n".join(started_lines(req.paths, start(req, search, report))), highlight=False, markup=False)
        return 0
    outcome = run(req, search, report)
    console.print("\n".join(outcome_lines(outcome)), highlight=False, markup=False)
    return 1 if outcome.unfinished or (outcome.step is not None and outcome.step.stuck) else 0


# ---------------------------------------------------------------- submit
def cmd_submit(args: argparse.Namespace) -> int:
    from hpcxfer import service

    if args.scripts and not args.dry_run:
        raise ConfigError(None, "--scripts", "goes with --dry-run (a real submit writes its scripts into the study)")
    if args.scripts:
        _scripts_folder(args.scripts, args.force)
    req = service.prepare(args.grid, args.backend, args.root)
    for line in req.warnings:
        console.print(Text(f"warning: {line}", style="yellow"))
    if args.dry_run:
        return _dry_run(args, service.dry_run(req), req.estimate)
    from hpcxfer.watch import SubmitReport

    outcome = service.submit(req, SubmitReport(console, err_console), wait=args.wait)
    if outcome.unfinished is None:
        return 0
    for s in outcome.unfinished:
        console.print(Text(s.task_id, style="red") + Text(f" {s.state}: {s.detail or 'not finished'}"
                                                          + (f" (log: {s.log})" if s.log else "")), soft_wrap=True)
    return 1 if outcome.unfinished else 0


def _dry_run(args, dry, estimate: str) -> int:
    """What a submit would do, written nowhere but to stdout (or the scripts into
    --scripts DIR): no scheduler asked, the data set not opened, the study left as it is."""
    sub = dry.submission
    console.print(estimate, highlight=False, markup=False)
    from hpcxfer.watch import SubmitReport

    SubmitReport(console, err_console).plan(dry.plan)
    if args.scripts:
        from hpcxfer.fileio import output_file, write_output

        folder = _scripts_folder(args.scripts, args.force)
        outs = {path: output_file(folder / Path(path).name, "--scripts", _script_kind(path), args.force)
                for path in sub.files}  # every file checked before the first is written
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for path, text in sub.files.items():
                write_output(outs[path], text.encode())
        except OSError as e:
            raise ConfigError(None, "--scripts", f"cannot write into {args.scripts}: {e.strerror or e}") from None
        for path in sub.files:
            console.print(Text(f"wrote {Path(args.scripts) / Path(path).name} (submit writes it as {path})"), soft_wrap=True)
    else:
        for script in sub.scripts:
            console.print(Text(f"# {script}\n{sub.files[script]}"), soft_wrap=True)
    for cmd in sub.commands:
        console.print(Text(cmd), soft_wrap=True)
    for note in dry.notes:
        console.print(Text(f"note: {note}"), soft_wrap=True)
    console.print(f"dry run: {len(dry.plan.todo)} tasks would be submitted; nothing was submitted and nothing "
                  "written" + (f" but the scripts in {args.scripts}" if args.scripts else ""),
                  markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from hpcxfer import overview, service

    wanted_states = _states_option(args.state)
    st = service.status(args.study_dir)
    paths, tasks, states, counts = st.paths, st.tasks, st.states, st.counts
    for line in st.problems + st.warnings:  # said, and the rest of the study still shown
        err_console.print(Text(f"warning: {line}"), soft_wrap=True)
    chosen = [s for s in states if not wanted_states or s.state in wanted_states]
    if args.json:
        shown = chosen if args.limit is None else chosen[:args.limit]
        rows = []
        for s in shown:
            p = st.progress(s)
            p["epoch"] = overview.epoch_now(paths, s, p)
            rows.append({**s.to_dict(), **{k: p[k] for k in ("epoch", "epochs", "val_acc", "wall_s", "host")}})
        out = {"counts": counts, "tasks": rows, "warnings": st.warnings, "leftover_checkpoint_bytes": st.leftover_bytes}
        if st.search is not None:  # a searched study: its rungs, candidates and compute used
            out["search"] = st.search.to_dict()
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    if args.detailed or wanted_states:
        console.print(Text(f"{paths.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                           + (f"; showing {', '.join(sorted(wanted_states))}" if wanted_states else "")))
        console.print(overview.task_table(console, paths, tasks, chosen, args.limit))
        return 0
    from hpcxfer.collect.search import search_parts

    searched = search_parts(console, st.search) if st.search is not None else []
    for part in overview.overview(console, paths, tasks, states, st.subgrids(), counts, args.study_dir,
                                  st.leftover_bytes, searched):
        console.print(part)
    if not console.is_terminal:  # a pipe or a file: every task too, so that grep finds any
        console.print(overview.task_table(console, paths, tasks, states, args.limit))
    return 0


def _states_option(values: list[str] | None) -> set[str]:
    from hpcxfer.service import STATES

    chosen = {v.strip() for text in values or [] for v in text.split(",") if v.strip()}
    bad = sorted(chosen - set(STATES))
    if bad:
        raise ConfigError(None, "--state", f"unknown state {bad[0]!r}", f"choose from {', '.join(STATES)}")
    return chosen


# ---------------------------------------------------------------- collect, report
def _collect(args: argparse.Namespace):
    from hpcxfer import service

    return service.collect(args.study_dir, getattr(args, "by", None))


def _print_summary(collected) -> None:
    """What was read and what was skipped, after every view has read what it needs."""
    for line in collected.summary():
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


#: What a dry run's --scripts folder holds, by suffix: job scripts and task lists.
SCRIPT_KINDS = {"txt": "list"}


def _script_kind(name: str) -> str:
    return SCRIPT_KINDS.get(Path(name).suffix.lstrip("."), "script")


def _scripts_folder(value: str, force: bool) -> Path:
    from hpcxfer.fileio import output_folder

    return output_folder(value, "--scripts", (), force)  # its files are checked once the dry run names them


def _write_out(out: Output, data: bytes) -> None:
    """Write what an output_file check allowed (hpcxfer/fileio.py), and say so."""
    from hpcxfer.fileio import write_output

    try:
        write_output(out, data)
    except OSError as e:
        raise ConfigError(None, "--out", f"cannot write {out.path}: {e.strerror or e}") from None
    if not out.direct:
        err_console.print(f"wrote {out.path}", highlight=False, markup=False)


def cmd_collect(args: argparse.Namespace) -> int:
    from hpcxfer.collect import render
    from hpcxfer.collect.build import build_views, parse_views

    fmt = render.format_of(args.out, args.format)
    names = parse_views(args.view)
    if fmt == "csv" and len(names) != 1:
        raise ConfigError(None, "--format", "csv holds one view", "name one with --view, or use json or markdown")
    from hpcxfer.collect.figures import CURVES, SPECS
    from hpcxfer.collect.plotting import FORMATS
    from hpcxfer.fileio import output_file, output_folder

    out = output_file(args.out, "--out", fmt, args.force) if args.out else None
    figure_files = [(f"{spec.name}.{ext}", ext) for spec in (*SPECS, CURVES) for ext in FORMATS]
    plots = output_folder(args.plots, "--plots", figure_files, args.force) if args.plots else None
    collected = _collect(args)
    asked = {n.strip() for v in args.view or [] for n in v.split(",")}
    views = build_views(collected, names, explicit="all" not in asked, jobs=args.jobs, ref=args.ref)
    if plots:
        from hpcxfer.collect.figures import study_figures
        from hpcxfer.collect.plotting import write_figures

        figures, left_out = study_figures(collected, args.ref)
        for data in figures:  # a figure the static list above does not name (the paired deltas)
            for ext in FORMATS:
                output_file(plots / f"{data.name}.{ext}", "--plots", ext, args.force)
        try:
            written = write_figures(figures, plots)
        except OSError as e:
            raise ConfigError(None, "--plots", f"cannot write into {args.plots}: {e.strerror or e}") from None
        for path in written:
            err_console.print(f"wrote {path}", highlight=False, markup=False)
        for line in left_out:
            err_console.print(line, highlight=False, markup=False)
    _print_summary(collected)
    if fmt == "table" and not args.out:
        for view in views:
            console.print(_view_table(view))
        return 0
    summary = {"notes": collected.summary(), "skipped": collected.records.skipped.to_dict()}
    text = {"csv": render.to_csv, "markdown": render.to_markdown, "table": render.to_text,
            "json": lambda v: render.to_json(v, summary)}[fmt](views)
    if out:
        _write_out(out, text.encode())
    else:
        sys.stdout.write(text)
    return 0


#: Columns of a collected view that a narrow terminal drops first: counts, then the paper's numbers.
_COUNT_HEADERS = {"replicates": "reps", "pairs": None, "cells done": "cells", "missing": None,
                  "wins / losses / ties": "w/l/t"}


def _view_table(view) -> Table | Text:
    """A collected view as a table that fits the terminal (numbers whole, counts and the
    paper's columns dropped first when it is narrow); a view without a row as one line."""
    if not view.rows:
        return Text(view.empty_line())
    cols = []
    for i, c in enumerate(view.columns):
        priority = 9 if i == 0 else 2 if c.header in _COUNT_HEADERS else 3 if c.header.startswith("paper") else 5
        cols.append(Col(c.header, _COUNT_HEADERS.get(c.header), priority=priority, right=c.numeric, text=not c.numeric))
    caption = Text("\n".join(view.notes)) if view.notes else None
    return fit_table(console, cols, view.cells(), title=Text(view.title), caption=caption, caption_justify="left")


def cmd_report(args: argparse.Namespace) -> int:
    from hpcxfer import service
    from hpcxfer.collect.html import build_report
    from hpcxfer.fileio import output_file

    if args.out:
        out = output_file(args.out, "--out", "html", args.force)
    else:  # the default report.html: a path inside the study that is no record of it
        out = output_file(service.report_path(args.study_dir), "report.html", "html", args.force)
    collected = _collect(args)
    html = build_report(collected, ref=args.ref)  # an unknown --ref stops here: one line, nothing written
    _print_summary(collected)
    _write_out(out, html.encode())
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
    from hpcxfer.shipped import PREPARED, example_files_at

    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        raise ConfigError(None, "DIR", f"{args.dir} is a file; name a folder for the example")
    files = example_files_at(args.example, target)
    if not args.force:
        present = [path for path, _ in files if path.exists() or path.is_symlink()]
        if present:
            more = f" (and {len(present) - 1} more)" if len(present) > 1 else ""
            raise ConfigError(present[0], None, f"exists{more}; nothing written", "--force overwrites")
    for path, data in files:
        if path.is_dir():
            raise ConfigError(path, None, "is a folder; nothing of the example can be written there")
    if args.example in PREPARED:  # its data before the grid files, which name it
        from hpcxfer.data.digits import prepare

        console.print(Text(prepare(target / PREPARED[args.example])))
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
    from hpcxfer import service

    cancelled = service.cancel(args.study_dir)
    # A PBS array is one id per subjob: said as ranges (1234[0-99]), never one id each.
    count = f" ({len(cancelled)} jobs)" if len(cancelled) > 1 else ""
    console.print(Text(f"cancelled {', '.join(id_ranges(cancelled))}{count}" if cancelled
                       else "nothing queued to cancel"), soft_wrap=True)
    return 0


# ---------------------------------------------------------------- dispatch
#: command -> its handler (the parser is hpcxfer/arguments.py)
HANDLERS = {"init": cmd_init, "plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "collect": cmd_collect,
            "report": cmd_report, "run-task": cmd_run_task, "cancel": cmd_cancel, "tune": cmd_tune}


def _run(args: argparse.Namespace) -> int:
    try:
        return HANDLERS[args.command](args)
    except HpcxferError as e:
        if args.debug:
            raise
        # User strings (paths, keys, a failed task's error) are text, never rich markup.
        err_console.print(Text("error:", style="red") + Text(f" {e}"), highlight=False, soft_wrap=True)
        return e.exit_status
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    plain_streams()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        status = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`hpcxfer plan --json | head -1`): what it wanted it has.
        # Python would report the failed flush at exit: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a process killed by SIGPIPE reports
