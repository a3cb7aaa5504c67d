"""Output that fits any terminal: at 80 columns `plan` and `collect --view table2` keep
every number whole (columns are dropped by priority, never cut), piped lines carry no
trailing spaces, and a stream that cannot encode the glyphs (latin-1, ASCII under
LC_ALL=C) gets ASCII stand-ins instead of a UnicodeEncodeError."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.synthetic import finetune_task, pretrain_task, write_study
from hpcxfer.grid import load_grid
from hpcxfer.grid.cost import fmt_number, price_study
from hpcxfer.terminal import id_ranges

ROOT = Path(__file__).resolve().parents[1]
ALL = ROOT / "jobs" / "plested2019" / "all.yaml"
#: The environments of a stream that cannot encode the block and ellipsis glyphs.
ENCODINGS = {"latin-1": {"PYTHONIOENCODING": "latin-1"}, "ascii": {"LC_ALL": "C", "PYTHONUTF8": "0"},
             "C": {"LC_ALL": "C"}}


def run(*args, columns: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI piped, as a job script or `| less` sees it; bytes, to check their encoding."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PYTHONIOENCODING")}
    if columns:
        base["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "hpcxfer", *map(str, args)], capture_output=True, timeout=300, check=False,
                          env={**base, **(env or {})})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two sizes x four splits x four protocols: Table 2 has pairs and intervals."""
    tasks = [pretrain_task(s) for s in range(4)]
    tasks += [finetune_task(s, size, n, h) for s in range(4) for size in (10, 25) for n in (0, 7) for h in (1, 8)]
    return write_study(tmp_path_factory.mktemp("width") / "w", tasks, records=2)


def fits(text: str, width: int = 80) -> None:
    long = [ln for ln in text.splitlines() if len(ln) > width]
    assert not long, "\n".join(long)
    assert "…" not in text


def test_plan_at_80_columns_keeps_every_queue_and_number_whole():
    out = run("plan", ALL, "--limit", "5", columns=80)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    fits(text)
    name, total = price_study(load_grid(ALL))[-1]
    # The label may fold onto a second line at 80 columns; its first words start the row.
    (last,) = [ln for ln in text.splitlines() if ln.lstrip().startswith(" ".join(name.split()[:3]))]
    for queue in ("volta", "a100", "hopper"):
        assert queue in text
    for q in ("gpuvolta", "dgxa100", "gpuhopper"):
        for value in (total.gpu_hours[q], total.su[q]):
            assert f" {fmt_number(value)}" in last, (q, last)
    rows = [ln.split() for ln in text.splitlines() if ln.lstrip().startswith("pt-s")]
    assert len(rows) == 4 and all(r[-1] == "256" and r[-2] == "90" for r in rows)  # batch, epochs whole
    assert "not shown at 80 columns:" in text  # what was dropped is said


def test_table2_at_80_columns_keeps_every_number_whole(study):
    full = run("collect", study.dir, "--view", "table2", "--format", "markdown").stdout.decode()
    header, *rows = [ln for ln in full.splitlines() if ln.startswith("| ") and not ln.startswith("| ---")]
    names = [c.strip() for c in header.strip("|").split("|")]
    wanted = [names.index(n) for n in ("per class", "val acc %", "margin", "margin 95 % interval")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells and all(re.fullmatch(r"\[[-+]\d+\.\d+, [-+]\d+\.\d+\]", r[wanted[-1]]) for r in cells)
    out = run("collect", study.dir, "--view", "table2", columns=80)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    fits(text)
    lines = text.splitlines()
    for r in cells:
        (line,) = [ln for ln in lines if ln.split()[:1] == [r[wanted[0]]]]  # the row of this size
        for i in wanted:
            assert r[i] in line, (names[i], r[i], line)


@pytest.mark.parametrize("argv", [["plan", ALL, "--limit", "3"], ["status", "{study}"],
                                  ["collect", "{study}", "--view", "table2"]])
def test_piped_output_has_no_trailing_spaces(study, argv):
    out = run(*(a.format(study=study.dir) if isinstance(a, str) else a for a in argv))
    assert out.returncode == 0, out.stderr
    padded = [ln for ln in out.stdout.decode().splitlines() if ln != ln.rstrip()]
    assert not padded, padded[:3]


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_a_stream_that_cannot_encode_the_glyphs_gets_ascii(study, name):
    env = ENCODINGS[name]
    encoding = "latin-1" if name == "latin-1" else "ascii" if name == "ascii" else "utf-8"
    for argv, expect in ((["status", study.dir], "done"), (["collect", study.dir, "--view", "cells,table2"], "val acc"),
                         (["plan", ALL, "--limit", "2"], "gpuhopper")):
        for columns in (None, 80) if name == "ascii" else (None,):
            out = run(*argv, columns=columns, env=env)
            assert out.returncode == 0 and b"Traceback" not in out.stderr, (argv, out.stderr.decode()[-800:])
            text = out.stdout.decode(encoding)  # what was written is what the stream can hold
            assert expect in text, argv
            if encoding == "ascii":
                assert "#" * 5 in text if argv[0] == "status" else True
                assert "+/-" in text if argv[0] == "collect" else True


def test_array_ids_are_summarised_as_ranges():
    ids = [f"1234[{i}].gadi-pbs" for i in (0, 1, 2, 3, 7, 9, 10)] + ["77_0", "77_1", "local:5"]
    assert id_ranges(ids) == ["local:5", "1234[0-3,7,9-10].gadi-pbs", "77_[0-1]"]
