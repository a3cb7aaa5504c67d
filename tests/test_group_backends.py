"""Protocol groups through every backend: a local slot, a PBS array element, a Gadi packed
slot and a SLURM array element each run one group; members' records are what their solo
runs write; re-submission and a grid that later adds protocols rerun nothing finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pbs_standin
import test_slurm
from test_slurm import GRID as SLURM_GRID
from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid

pytestmark = pytest.mark.slow  # every test trains a group and its members alone

#: Three protocols of one cell (split 0, 10 per class) form one group of three.
GROUPED = {"runtime": {"eval_every": 1, "group_max": 0},
           "experiments": [{"name": "named", "protocol": ["scratch", "common"]},
                           {"name": "n", "transfer_layers": [3], "frozen_layers": [2], "high_lr_layers": 1}]}
METRICS = ("val_acc", "val_loss", "train_loss", "train_acc")


def _results(study: Path, tasks) -> dict[str, dict]:
    return {t.task_id: read_json(study / "tasks" / t.task_id / "result.json") for t in tasks}


def _curves(study: Path, task_id: str) -> list[dict]:
    lines = (study / "tasks" / task_id / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("wall_s", "images_per_s")} for x in lines]


def test_a_local_slot_runs_a_group_with_the_results_of_solo_runs(write_grid, cli, tmp_path):
    grouped_grid = write_grid(GROUPED)
    tasks = expand(load_grid(grouped_grid))
    fine = [t for t in tasks if t.stage == "finetune"]
    study = tmp_path / "runs" / "tiny"
    out = cli("submit", grouped_grid, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(2 workers, 1 of them protocol groups)" in out.stdout
    (group_dir,) = (study / "groups").iterdir()
    assert read_json(group_dir / "group.json")["members"] == [t.task_id for t in fine]
    grouped = _results(study, fine)
    assert {r["group"] for r in grouped.values()} == {group_dir.name}
    status = json.loads(cli("status", study, "--json").stdout)
    assert {t["task_id"]: t["group"] for t in status["tasks"]} == {
        t.task_id: (group_dir.name if t.stage == "finetune" else None) for t in tasks}
    assert "submitting 0 to local" in cli("submit", grouped_grid, "--backend", "local").stdout

    # The same study, every task alone: the same numbers, record for record.
    alone_grid = write_grid({**GROUPED, "root": str(tmp_path / "alone"), "runtime": {"group_max": 1}},
                            name="alone.yaml")
    out = cli("submit", alone_grid, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    alone_study = tmp_path / "alone" / "tiny"
    assert not (alone_study / "groups").exists()
    alone = _results(alone_study, fine)
    for t in fine:
        assert {m: grouped[t.task_id][m] for m in METRICS} == {m: alone[t.task_id][m] for m in METRICS}
        assert _curves(study, t.task_id) == _curves(alone_study, t.task_id)
        assert alone[t.task_id].get("group") is None

    # A grid that adds a protocol to the cell trains the new one only.
    finished = {t.task_id: (study / "tasks" / t.task_id / "result.json").stat().st_mtime_ns for t in fine}
    more = write_grid({**GROUPED, "experiments": [*GROUPED["experiments"], {"name": "more", "transfer_layers": 5,
                                                                               "high_lr_layers": 8}]}, name="more.yaml")
    out = cli("submit", more, "--backend", "local", "--wait")
    assert out.returncode == 0 and "submitting 1 to local" in out.stdout, out.stdout + out.stderr
    assert {t: (study / "tasks" / t / "result.json").stat().st_mtime_ns for t in finished} == finished


@pytest.mark.parametrize("backend", ["pbs", "gadi"])
def test_a_pbs_element_and_a_gadi_slot_run_a_group(write_grid, cli, tmp_path, backend):
    from test_pbs import GRID

    env = pbs_standin.install(tmp_path)
    grid_path = write_grid({"runtime": {"threads": 1, "group_max": 0},
                            "finetune": {**GRID["finetune"], "seed": [0], "protocol": ["common", "scratch"]},
                            "study": "gr"}, base=GRID)
    study = tmp_path / "runs" / "gr"
    out = cli("submit", grid_path, "--backend", backend, env=env)
    assert out.returncode == 0, out.stderr
    pre, fine = pbs_standin.jobs(env)
    listed = Path(fine["script"]).with_suffix(".txt").read_text().split()
    assert len(listed) == 1 and listed[0].startswith("g-")  # one element (or slot) for the group
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["queued"] == 3  # the group's two members are held by its job
    assert "submitting 0" in cli("submit", grid_path, "--backend", backend, env=env).stdout

    assert [j["exit"] for j in pbs_standin.run_queued(env, tmp_path)] == [0, 0]
    tasks = [t for t in expand(load_grid(grid_path)) if t.stage == "finetune"]
    assert {r["group"] for r in _results(study, tasks).values()} == {listed[0]}
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["done"] == 3


@pytest.mark.slurm
@test_slurm.NEEDS_SLURM  # skipped where SLURM is not installed
def test_a_slurm_element_runs_a_group(cluster, write_grid, cli, tmp_path):
    grid_path = write_grid({"runtime": {"threads": 1, "group_max": 0, "eval_every": 2},
                            "finetune": {**SLURM_GRID["finetune"], "seed": [0], "epochs": 2},
                            "experiments": [{"protocol": ["common", "scratch"]}], "study": "gs"}, base=SLURM_GRID)
    study = tmp_path / "runs" / "gs"
    out = cli("submit", grid_path, "--backend", "slurm", "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = [t for t in expand(load_grid(grid_path)) if t.stage == "finetune"]
    groups = {r["group"] for r in _results(study, tasks).values()}
    assert len(tasks) == 2 and len(groups) == 1 and next(iter(groups)).startswith("g-")
    (rec,) = [json.loads(x) for x in (study / "backends" / "slurm" / "submissions.jsonl").read_text().splitlines()
              if json.loads(x)["stage"] == "finetune"]
    assert rec["members"] == {next(iter(groups)): [t.task_id for t in tasks]}
