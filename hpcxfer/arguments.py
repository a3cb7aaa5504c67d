"""hpcxfer's arguments: the parser of every command, its help and its examples. Argument
errors are one line and exit status 2, as every other bad input (docs/design.md §2); the
handler of each command is in hpcxfer/cli.py, chosen by the command's name."""

from __future__ import annotations

import argparse
import textwrap


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a positive whole number")
    return int(text)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), exit status 2 as before."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


DESCRIPTION = """\
Transfer-learning protocol studies (Plested & Gedeon 2019) on supercomputers: a grid file
is expanded into tasks, submitted as scheduler jobs (local, SLURM, PBS Pro, NCI Gadi),
followed, and collected into the paper's tables and figures."""

EPILOG = """\
a study from start to end:
  hpcxfer init quickstart                         # writes quickstart.yaml here
  hpcxfer plan quickstart.yaml                    # tasks, counts and cost
  hpcxfer submit quickstart.yaml --backend local --wait
  hpcxfer status runs/quickstart
  hpcxfer collect runs/quickstart

bad input ends in one line naming the file and field, exit status 2; --debug (anywhere on
the line) shows the traceback instead."""

#: name -> (one-line help, description, example)
COMMANDS = {
    "init": ("write a shipped example grid into a folder",
             ("Write the files of a shipped example (quickstart: a small Fashion-MNIST study for a "
             "laptop; plested2019: the paper's six experiments on ImageNet; dissimilar: Fashion-MNIST's "
             "clothes to scikit-learn's digits, whose images it writes under DIR/digits) into DIR. Files that exist "
             "are never overwritten without --force."),
             "hpcxfer init plested2019 ~/grids    # then: hpcxfer plan ~/grids/plested2019/all.yaml"),
    "plan": ("validate and expand a grid: tasks, counts and cost",
             ("Validate GRID and expand it into tasks: a table of tasks, the counts by stage and "
             "sub-grid, and the estimated GPU-hours and Gadi service units per queue. Reads nothing "
             "but the grid and writes nothing."),
             "hpcxfer plan jobs/plested2019/all.yaml --limit 10"),
    "tune": ("search a grid's protocols by successive halving, per target size",
             ("Train every protocol of GRID to the first rung of its `search:` section (or the defaults), "
              "keep the best 1/eta of each target size by a paired comparison with the leader, train those "
              "to the next rung, and so on. Without --wait it returns at once: on SLURM, PBS and Gadi a small "
              "promotion job after each rung's jobs decides it and submits the next; on the local backend a "
              "detached driver does (its log in STUDY/tune/jobs/driver.log). Running it again resumes the "
              "search. --dry-run shows the rungs, what each size trains and the share of the grid's "
              "fine-tuning images the search uses, and writes nothing."),
             "hpcxfer tune grid.yaml --dry-run"),
    "submit": ("submit every task not done and not queued",
               ("Submit every task of GRID that is not done, queued or running: running it again "
               "resumes a half-finished study. --dry-run prints the job scripts and commands "
               "instead, without asking a scheduler, opening the data set or writing anything."),
               "hpcxfer submit grid.yaml --backend gadi --dry-run --scripts /tmp/scripts"),
    "status": ("how far a study is: counts, failed tasks with their log, running tasks",
               ("An overview of STUDY_DIR that fits a screen: counts and a bar per stage and "
               "sub-grid, the failed tasks first with the tail of their log, then the running ones "
               "at their epoch. --detailed or --state list tasks one per row (epoch of epochs, "
               "latest validation accuracy, wall time, host); piped into another command, every "
               "task is listed after the overview. A scheduler that cannot be reached is a warning: "
               "the states on disk are still shown."),
               "hpcxfer status runs/quickstart --state failed,running"),
    "collect": ("the study's tables (and the paper's figures with --plots)",
                ("Mean and standard deviation over splits per protocol and size, and the paper's "
                "views. --out's extension chooses the format (.csv .md .json .txt) unless --format "
                "is given; JSON is always {\"views\": {name: ...}, \"summary\": ...}."),
                "hpcxfer collect runs/quickstart --view table2 --out table2.csv"),
    "report": ("one self-contained HTML file with every table and figure",
               "Every table and figure of STUDY_DIR in one HTML file to send to a colleague.",
               "hpcxfer report runs/quickstart --out quickstart.html"),
    "run-task": ("run one task (what an array task runs)",
                 ("Run one task of STUDY_DIR to completion or to a checkpoint on request: what every "
                 "array element and packed job runs. Needs torch (pip install 'hpcxfer[train]')."),
                 "hpcxfer run-task runs/quickstart 0"),
    "cancel": ("cancel what the study has queued",
               ("Cancel every job of STUDY_DIR that a scheduler (or the local runner) still holds; "
               "running workers checkpoint before they exit."),
               "hpcxfer cancel runs/quickstart"),
}


def build_parser() -> argparse.ArgumentParser:
    from hpcxfer import __version__
    from hpcxfer.collect.render import FORMATS
    from hpcxfer.shipped import EXAMPLES

    parser = _Parser(prog="hpcxfer", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcxfer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # --debug after the subcommand too; SUPPRESS keeps a subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str):
        short, description, example = COMMANDS[name]
        return sub.add_parser(name, help=short, description=textwrap.fill(description, 88),
                              epilog=f"example:\n  {example}",
                              parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("init")
    p.add_argument("example", choices=sorted(EXAMPLES))
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where to write it (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")

    p = command("plan")
    p.add_argument("grid")
    p.add_argument("--json", action="store_true", help="one JSON object per task per line")
    p.add_argument("--limit", type=_count, default=40, help="task rows to show (default 40)")

    p = command("tune")
    p.add_argument("grid")
    p.add_argument("--backend", help="local, slurm, pbs or gadi (default: detected)")
    p.add_argument("--root", help="parent folder of the study directory (overrides the grid's root)")
    p.add_argument("--wait", action="store_true", help="drive every rung from here, waiting for each "
                   "(default: return at once; promotion jobs or a detached driver go on)")
    p.add_argument("--dry-run", action="store_true", help="show the search and its price; write nothing")

    p = command("submit")
    p.add_argument("grid")
    p.add_argument("--backend", choices=None, help="local, slurm, pbs or gadi (default: detected)")
    p.add_argument("--root", help="parent folder of the study directory (overrides the grid's root)")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts and commands; ask no scheduler, "
                   "check no data, write nothing")
    p.add_argument("--scripts", metavar="DIR", help="with --dry-run: write the job scripts and task lists into DIR")
    p.add_argument("--wait", action="store_true", help="stay until the study is done, showing progress and an ETA")
    p.add_argument("--force", action="store_true", help="with --scripts: replace files there that are not "
                   "hpcxfer's own scripts")

    p = command("status")
    p.add_argument("study_dir")
    p.add_argument("--json", action="store_true",
                   help='{"counts": {state: n}, "tasks": [{"task_id", "state", "dir", ...}], "warnings": [...]}')
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only tasks in STATE (pending, queued, running, done, failed, pruned); repeat or comma-separate")
    p.add_argument("--detailed", action="store_true", help="every task, one row each (failed first)")
    p.add_argument("--limit", type=_count, help="at most N task rows")

    p = command("collect")
    p.add_argument("study_dir")
    p.add_argument("--view", action="append", metavar="NAME",
                   help="cells (default), table1, table2, compare, paired (each protocol's difference from "
                        "--ref, paired by split and seed), paper, incomplete, curves (reads every "
                        "metrics record), or all; repeat or comma-separate for several")
    p.add_argument("--ref", metavar="PROTOCOL", help="the paired view's reference: common, scratch, optimal, a "
                   "label such as 'n5 h8 d30 f0' (default: common if the study has it, else scratch)")
    p.add_argument("--by", metavar="AXES", help="comma-separated task fields that make a cell (default: the "
                   "protocol and every setting except split and seed); the rest are averaged over")
    p.add_argument("--format", choices=FORMATS, help="default: from --out's extension (.csv .md .json .txt), "
                   "else a table")
    p.add_argument("--out", help="write to this file instead of the terminal")
    p.add_argument("--plots", metavar="DIR", help="write the paper's Figs. 1-6 as 300 dpi PNG, PDF and SVG into DIR")
    p.add_argument("--force", action="store_true", help="replace an --out file (or figures in --plots) that is "
                   "not an earlier output of the same format")
    p.add_argument("--jobs", type=_positive, help="processes that read metrics records (default: one per core)")

    p = command("report")
    p.add_argument("study_dir")
    p.add_argument("--out", help="the HTML file (default: STUDY_DIR/report.html)")
    p.add_argument("--ref", metavar="PROTOCOL", help="the reference of the paired view and the difference figure: "
                   "as collect's --ref (default: common if the study has it, else scratch)")
    p.add_argument("--force", action="store_true", help="replace an --out file that is not an earlier report")

    p = command("run-task")
    p.add_argument("study_dir")
    p.add_argument("task", help="index in tasks.jsonl or task id")

    p = command("cancel")
    p.add_argument("study_dir")
    return parser
