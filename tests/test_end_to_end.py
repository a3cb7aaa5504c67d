"""A tiny real study through the command line: submit -> local backend -> worker ->
status -> collect, then a second submit that finds nothing to do."""

from __future__ import annotations

import json

import pytest

from conftest import prepare_study
from hpcxfer.grid import expand, load_grid


@pytest.mark.slow  # a real study trained end to end
def test_tiny_study_end_to_end(write_grid, cli, tmp_path):
    grid_path = write_grid({"finetune": {"split": [0, 1]}})
    tasks = expand(load_grid(grid_path))
    study = tmp_path / "runs" / "tiny"

    out = cli("submit", grid_path, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"submitting {len(tasks)} to local" in out.stdout

    status = json.loads(cli("status", study, "--json").stdout)
    assert status["counts"]["done"] == len(tasks) == 2 + 2 * 3
    assert {t["task_id"] for t in status["tasks"]} == {t.task_id for t in tasks}
    assert all(t["state"] == "done" for t in status["tasks"])

    summary = json.loads(cli("collect", study, "--format", "json").stdout)["views"]["cells"]["rows"]
    cells = {(s["protocol"], s["examples_per_class"]): s for s in summary}
    assert set(cells) == {("scratch (n0 h8 d30 f0)", 10), ("common (n7 h8 d30 f0)", 10), ("n3 h1 d30 f2", 10)}
    for s in summary:
        assert s["replicates"] == 2 and s["missing"] == 0
        results = [json.loads((study / "tasks" / t.task_id / "result.json").read_text())["val_acc"]
                   for t in tasks if t.stage == "finetune" and t.transfer_layers == s["transfer_layers"]]
        assert abs(s["val_acc_mean"] - sum(results) / 2) < 1e-12

    for fmt, marker in (("csv", "examples_per_class,"), ("markdown", "| per class |")):
        text = cli("collect", study, "--format", fmt).stdout
        assert marker in text and "scratch" in text
    assert "common" in cli("collect", study).stdout

    again = cli("submit", grid_path, "--backend", "local", "--wait")
    assert again.returncode == 0, again.stderr
    assert f"{len(tasks)} done; submitting 0" in again.stdout


@pytest.mark.slow
def test_half_finished_study_runs_only_what_is_left(write_grid, cli, tmp_path):
    grid_path = write_grid()
    tasks = expand(load_grid(grid_path))
    study = tmp_path / "runs" / "tiny"
    pre = tasks[0]
    prepare_study(grid_path)
    assert cli("run-task", study, pre.task_id).returncode == 0
    result = (study / "tasks" / pre.task_id / "result.json").read_text()

    out = cli("submit", grid_path, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stderr
    assert f"submitting {len(tasks) - 1} to local" in out.stdout
    assert (study / "tasks" / pre.task_id / "result.json").read_text() == result  # not re-run


def test_missing_study_is_one_line_and_exit_2(cli, tmp_path):
    for command in (["status", tmp_path / "nope"], ["collect", tmp_path / "nope"], ["run-task", tmp_path / "nope", "0"]):
        out = cli(*command)
        assert out.returncode == 2 and "not a study directory" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
