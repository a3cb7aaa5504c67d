"""One task pool, one rule set (hpcxfer/backends/pool.py, docs/design.md §8), whether the
local backend's runner or a Gadi packed job runs it: the same worker exits lead to the same
units started, the same outcomes reported and the same exit status.

The workers here are a stand-in that exits as each test's plan says (and writes a valid
result when it exits 0), so every rule is checked in well under a second per case."""

from __future__ import annotations

import json
import logging
import signal
import sys

import pytest

from hpcxfer.backends import local, pack
from hpcxfer.backends.pool import Pool
from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid import expand
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.procs import ProcessId
from hpcxfer.study import write_study
from hpcxfer.worker import EXIT_BUSY, EXIT_RESUME
from test_gadi import GRID as GADI_GRID

#: Gadi's test study (1 pre-training, 2 fine-tunings that depend on it), not grouped.
GRID = {**{k: v for k, v in GADI_GRID.items() if k != "gadi"}, "study": "pool"}

#: The stand-in worker: `FAKE STUDY UNIT`; exits with the next status of $FAKE_PLAN[UNIT]
#: (the last one repeats; 0 when the plan does not name the unit) and notes each start.
FAKE = r"""
import json, os, sys
study, unit = sys.argv[1], sys.argv[2]
plan = json.load(open(os.environ["FAKE_PLAN"]))
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(unit + "\n")
starts = open(os.environ["FAKE_CALLS"]).read().split().count(unit)
codes = plan.get(unit, [0])
code = codes[min(starts, len(codes)) - 1]
if code == 0:
    with open(os.path.join(study, "tasks", unit, "result.json"), "w") as f:
        json.dump({"task_id": unit, "val_acc": 0.5}, f)
sys.exit(code)
"""


@pytest.fixture
def study(tmp_path, monkeypatch):
    grid = Grid.model_validate({**GRID, "root": str(tmp_path)})
    tasks = expand(grid)
    paths = StudyPaths.of(tmp_path, "pool")
    write_study(paths, grid, tasks)
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE)
    for module in (local, pack):
        monkeypatch.setattr(module, "worker_command", lambda p, unit: [sys.executable, str(fake), str(p.dir), unit])
    monkeypatch.setenv("FAKE_PLAN", str(tmp_path / "plan.json"))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.txt"))
    pt = next(t.task_id for t in tasks if t.stage == "pretrain")
    fts = [t.task_id for t in tasks if t.stage == "finetune"]
    assert len(fts) == 2
    return paths, pt, fts, tmp_path


def run(kind: str, study, plan: dict) -> tuple[int, list[str]]:
    """(the pool's exit status, the units started in order) after running every unit."""
    paths, pt, fts, tmp = study
    (tmp / "plan.json").write_text(json.dumps(plan))
    if kind == "local":
        pool = local.runner(paths, [pt, *fts], 2, 1)
        pool.run()
        status = pool.exit_status()
    else:
        (tmp / "list.txt").write_text("".join(f"{u}\n" for u in (pt, *fts)))
        status = pack.main([str(paths.dir), str(tmp / "list.txt"), "--slots", "2", "--walltime-s", "600",
                            "--min-left-s", "0"])
    calls = tmp / "calls.txt"
    return status, calls.read_text().split() if calls.exists() else []


KINDS = ("local", "pack")


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_dependency_skips_its_dependents_and_says_so(kind, study, caplog):
    paths, pt, fts, _ = study
    caplog.set_level(logging.INFO)
    status, started = run(kind, study, {pt: [1]})
    assert started == [pt]  # the fine-tuning never starts
    assert status == 1
    for ft in fts:
        assert f"{ft} skipped" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_exit_75_is_left_for_the_next_submit_not_run_again(kind, study, caplog):
    paths, pt, fts, _ = study
    caplog.set_level(logging.INFO)
    status, started = run(kind, study, {pt: [EXIT_RESUME, 0]})  # a second start would finish it
    assert started == [pt]
    assert status == EXIT_RESUME  # not a failure: units are left
    assert "skipped" not in caplog.text  # its dependents are left too, not skipped
    assert not paths.task(pt).failed.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_exit_73_is_neither_done_nor_failed(kind, study):
    paths, pt, fts, _ = study
    status, started = run(kind, study, {fts[0]: [EXIT_BUSY]})
    assert sorted(started) == sorted([pt, *fts]) and started[0] == pt
    assert status == EXIT_RESUME  # fts[0] is not done; another process holds it


@pytest.mark.parametrize("kind", KINDS)
def test_a_dependency_held_by_no_one_after_73_skips_its_dependents(kind, study, caplog):
    """73 says another process holds it; once none does and it is not done, what depends on
    it cannot run here, even though this very run's file names it."""
    paths, pt, fts, _ = study
    run_file = paths.backend("local").run_file("this-run")
    atomic_write_json(run_file, {**ProcessId.current().to_dict(), "tasks": [pt, *fts], "group": False})

    def hung(signum, frame):
        raise TimeoutError("the pool waits for a dependency no one runs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        status, started = run(kind, study, {pt: [EXIT_BUSY]})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert started == [pt] and status == 1
    assert all(f"{ft} skipped" in caplog.text for ft in fts)


@pytest.mark.parametrize("kind", KINDS)
def test_a_unit_already_done_is_not_started(kind, study):
    paths, pt, fts, _ = study
    paths.task(pt).result.write_text(json.dumps({"task_id": pt, "val_acc": 0.4}))
    status, started = run(kind, study, {})
    assert sorted(started) == sorted(fts)
    assert status == 0


def test_what_an_exit_status_means(study):
    paths, pt, fts, _ = study
    pool = Pool(paths, [pt], 1, launch=None)
    assert [pool._end(c) for c in (0, EXIT_BUSY, EXIT_RESUME, 1, 2, -signal.SIGKILL)] == \
        ["done", "elsewhere", "interrupted", "failed", "failed", "failed"]
    pool.stop()  # the scheduler's SIGKILL after its grace period is not the unit's failure
    assert [pool._end(c) for c in (EXIT_RESUME, -signal.SIGKILL, -signal.SIGTERM, 1)] == \
        ["interrupted", "interrupted", "interrupted", "failed"]
