"""The local backend detached: submit returns at once, a second submit finds everything
held, cancel stops the runner, and the next submit finishes what is left."""

from __future__ import annotations

import json
import time

import pytest

from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.layout import StudyPaths

pytestmark = pytest.mark.slow  # a real study trained by the local runner


def _status(cli, study) -> dict:
    out = cli("status", study, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_detached_submit_held_cancel_and_resume(write_grid, cli, tmp_path):
    # A pre-training long enough to be caught running.
    grid_path = write_grid({"pretrain": {"epochs": 30}, "local": {"max_parallel": 1}, "runtime": {"eval_every": 30}})
    tasks = expand(load_grid(grid_path))
    study = tmp_path / "runs" / "tiny"

    first = cli("submit", grid_path, "--backend", "local")
    assert first.returncode == 0, first.stderr
    assert f"submitting {len(tasks)} to local" in first.stdout

    status = _wait_for(lambda: (s := _status(cli, study))["counts"]["running"] == 1 and s)
    assert status["counts"]["queued"] == len(tasks) - 1
    running = [t for t in status["tasks"] if t["state"] == "running"]
    assert running[0]["task_id"] == tasks[0].task_id  # pre-training first
    pre = StudyPaths(study).task(tasks[0].task_id)
    _wait_for(lambda: pre.checkpoint.exists() or pre.result.exists())
    assert not pre.result.exists(), "the pre-training finished before the cancel: make it longer"

    second = cli("submit", grid_path, "--backend", "local")
    assert "submitting 0 to local" in second.stdout, second.stdout

    assert "cancelled local:" in cli("cancel", study).stdout
    status = _wait_for(lambda: (s := _status(cli, study))["counts"]["running"] == 0
                       and s["counts"]["queued"] == 0 and s)
    assert status["counts"]["done"] == 0
    assert status["counts"]["pending"] == len(tasks)

    third = cli("submit", grid_path, "--backend", "local", "--wait", timeout=900)  # 30 epochs, on a loaded machine
    assert third.returncode == 0, third.stderr
    assert _status(cli, study)["counts"]["done"] == len(tasks)
    # The cancelled pre-training resumed from its checkpoint once; the rest ran uninterrupted.
    restarts = {t.task_id: read_json(StudyPaths(study).task(t.task_id).result)["restarts"] for t in tasks}
    assert restarts == {t.task_id: int(t is tasks[0]) for t in tasks}, restarts


def test_a_second_submit_wait_waits_for_the_first_and_shares_its_outcome(write_grid, cli, tmp_path):
    import subprocess
    import sys

    grid_path = write_grid({"local": {"max_parallel": 1}})
    tasks = expand(load_grid(grid_path))
    study = tmp_path / "runs" / "tiny"
    runs = study / "backends" / "local" / "runs"
    first = subprocess.Popen([sys.executable, "-m", "hpcxfer", "submit", str(grid_path), "--backend", "local",
                              "--wait"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: runs.is_dir() and any(runs.glob("*.json")))  # the first holds every task now
    second = cli("submit", grid_path, "--backend", "local", "--wait", timeout=900)
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert "submitting 0 to local" in second.stdout, second.stdout
    assert _status(cli, study)["counts"]["done"] == len(tasks)  # it returned once they were all done
    assert first.wait(timeout=120) == 0
    assert cli("collect", study).returncode == 0
