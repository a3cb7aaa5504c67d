"""Read anywhere: output piped or redirected is never cropped, a closed pipe is no
traceback, --format follows --out's extension, CSV always has a header, JSON has one
shape, help says what each command does with an example, and --debug goes anywhere."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcxfer.arguments import COMMANDS
from benchmarks.synthetic import finetune_task, pretrain_task, write_study
from hpcxfer.grid import load_grid
from hpcxfer.grid.cost import fmt_number, price_study

ROOT = Path(__file__).resolve().parents[1]
ALL = ROOT / "jobs" / "plested2019" / "all.yaml"


def shell(command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`command` in bash, as a user types it, with no COLUMNS to lean on."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["HPCXFER"] = f"{sys.executable} -m hpcxfer"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_plan_piped_keeps_every_queue_and_its_numbers():
    out = shell(f"$HPCXFER plan {ALL} --limit 2 | cat")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    rows = price_study(load_grid(ALL))
    total = rows[-1][1]
    lines = out.stdout.splitlines()
    (last,) = [ln for ln in lines if ln.startswith("│ total in groups (as run)")]
    for queue in ("gpuvolta", "dgxa100", "gpuhopper"):
        assert queue in out.stdout
        for value in (total.gpu_hours[queue], total.su[queue]):
            assert f" {fmt_number(value)} " in last, (queue, last)
    assert "3.6 optimal vs common vs scratch" in out.stdout  # a long sub-grid name, not cut with …
    assert "…" not in out.stdout


def test_a_closed_pipe_is_no_traceback():
    out = shell(f"$HPCXFER plan {ALL} --json | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2")
    assert json.loads(out.stdout.splitlines()[0])["task_id"]
    assert out.stderr == "status 141\n", out.stderr  # nothing but the status: no traceback, no warning
    out = shell(f"$HPCXFER plan {ALL} | head -3")
    assert out.stderr == "" and len(out.stdout.splitlines()) == 3


def test_help_describes_every_command_with_an_example(cli):
    top = cli("--help")
    assert top.returncode == 0 and "a study from start to end" in top.stdout
    assert "One handler" not in top.stdout  # no internal docstring
    for name in COMMANDS:
        out = cli(name, "--help")
        assert out.returncode == 0, name
        assert "example:\n  hpcxfer " + name in out.stdout, name
        assert len(COMMANDS[name][1]) > 40, name  # a description, not a fragment


def test_debug_goes_before_or_after_the_subcommand(cli, tmp_path):
    for argv in (["--debug", "status", tmp_path], ["status", tmp_path, "--debug"], ["status", "--debug", tmp_path]):
        out = cli(*argv)
        assert out.returncode != 0 and "Traceback" in out.stderr and "StudyError" in out.stderr, argv
    out = cli("status", tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A finished synthetic study of two protocols at one size, and one task without a result."""
    tasks = [pretrain_task(0), pretrain_task(1)] + [finetune_task(s, 10, n) for s in (0, 1) for n in (0, 7)]
    tasks.append(finetune_task(0, 25, 7))
    return write_study(tmp_path_factory.mktemp("small"), tasks, records=3,
                       finished=lambda t: t.examples_per_class != 25)


def test_format_follows_the_out_extension(small, cli, tmp_path):
    for name, check in (("r.csv", lambda t: next(csv.DictReader(io.StringIO(t)))["replicates"] == "2"),
                        ("r.md", lambda t: t.startswith("### ") and "| replicates |" in t),
                        ("r.json", lambda t: set(json.loads(t)) == {"views", "summary"}),
                        ("r.txt", lambda t: "val acc %" in t and "\x1b[" not in t and "━" in t)):
        out = cli("collect", small.dir, "--out", tmp_path / name)
        assert out.returncode == 0, out.stderr
        assert check((tmp_path / name).read_text()), name
    forced = cli("collect", small.dir, "--out", tmp_path / "x.txt", "--format", "csv")
    assert forced.returncode == 0 and (tmp_path / "x.txt").read_text().startswith("protocol,")
    bad = cli("collect", small.dir, "--out", tmp_path / "r.xlsx")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--format" in bad.stderr
    assert not (tmp_path / "r.xlsx").exists()


def test_csv_of_an_empty_view_has_its_header(cli, tmp_path):
    done = write_study(tmp_path / "done", [pretrain_task(0), finetune_task(0, 10, 7)], records=2)
    none = write_study(tmp_path / "none", [pretrain_task(0)], records=0, finished=lambda t: False)
    for study, view, first in ((done, "incomplete", "task_id"), (none, "cells", "protocol"),
                               (none, "table1", "transfer_layers"), (none, "compare", "examples_per_class"),
                               (none, "table2", "examples_per_class")):
        out = cli("collect", study.dir, "--view", view, "--format", "csv")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 1 and lines[0].split(",")[0] == first, (view, out.stdout)


def test_json_has_one_shape_for_one_view_or_several(small, cli):
    one = json.loads(cli("collect", small.dir, "--format", "json").stdout)
    two = json.loads(cli("collect", small.dir, "--view", "cells,incomplete", "--format", "json").stdout)
    assert set(one) == set(two) == {"views", "summary"}
    assert list(one["views"]) == ["cells"] and list(two["views"]) == ["cells", "incomplete"]
    cells = one["views"]["cells"]
    assert set(cells) == {"title", "fields", "rows", "notes"} and cells["rows"] == two["views"]["cells"]["rows"]
    assert {r["replicates"] for r in cells["rows"]} == {2, 0} and all("n" not in r for r in cells["rows"])
    assert cells["fields"][:4] == ["protocol", "examples_per_class", "replicates", "missing"]
    assert one["summary"]["notes"][0].startswith("7 tasks: 6 with results")


def test_the_replicate_count_is_one_word_in_every_view(small, cli):
    text = cli("collect", small.dir, "--view", "cells,table2,curves", "--format", "markdown").stdout
    for header in text.splitlines():
        if header.startswith("| "):
            cols = [c.strip() for c in header.strip("|").split("|")]
            assert "n" not in cols and "runs" not in cols, header
    assert text.count("| replicates |") + text.count("| replicates") >= 3
