"""NCI Gadi packed jobs at the process boundary (no PBS server can run here): the queue
table, a golden packed script, and a packed job run by bash under PBS's environment,
killed at "walltime" mid-task, whose unfinished tasks the next `submit` finishes.

Regenerate the golden file: HPCXFER_REGEN_GOLDEN=1 python -m pytest tests/test_gadi.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pbs_standin
from hpcxfer.backends.gadi import GadiBackend
from hpcxfer.fileio import read_json
from hpcxfer.grid import expand
from hpcxfer.grid.groups import Unit
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.sites import GADI_QUEUES
from hpcxfer.study import write_study
from test_pbs import golden

GRID = {
    "study": "gd",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 1, "batch_size": 50, "examples_per_class": 20},
    "finetune": {"split": [0], "seed": [0, 1], "examples_per_class": [100], "epochs": 4, "batch_size": 20,
                 "protocol": "common"},
    "runtime": {"eval_every": 4, "threads": 1, "group_max": 1},
    "gadi": {"project": "ab12", "queue": "gpuvolta", "storage": "gdata/ab12+scratch/ab12", "jobfs_gb": 20,
             "gpus_per_job": 2, "walltime": "0:30:00", "max_jobs": 1},
}


def test_queue_table_follows_gadi_ratios():
    volta, a100, hopper = GADI_QUEUES["gpuvolta"], GADI_QUEUES["dgxa100"], GADI_QUEUES["gpuhopper"]
    assert volta.request(1) == {"ngpus": 1, "ncpus": 12, "mem_gb": 95}
    assert volta.su_per_hour(1) == 36.0  # docs/design.md §4: one V100 with 12 CPUs
    assert a100.request(2)["ncpus"] == 32 and hopper.request(4)["ncpus"] == 48


def test_packed_script_matches_golden_file():
    grid = Grid.model_validate({**GRID, "runtime": {}})  # threads: the queue's CPUs per GPU
    paths = StudyPaths(Path("/scratch/ab12/runs/gd"))
    golden("gadi_pack.sh", GadiBackend().render_script(
        paths, grid, "finetune", ["ft-a", "ft-b"], paths.backend("gadi").dir / "lists" / "000-finetune-0.txt",
        ["100.gadi-pbs"]))


def test_packed_jobs_never_share_a_task(tmp_path):
    grid = Grid.model_validate({**GRID, "root": str(tmp_path), "finetune": {**GRID["finetune"], "seed": [0, 1, 2, 3, 4]},
                                "gadi": {**GRID["gadi"], "max_jobs": 2}})
    tasks = expand(grid)
    paths = StudyPaths.of(tmp_path, "gd")
    write_study(paths, grid, tasks)
    sub = GadiBackend().submit(paths, grid, [Unit.of_task(t) for t in tasks], dry_run=True)
    lists = [sub.files[str(Path(s).with_suffix(".txt"))].split() for s in sub.scripts]
    finetune = [ids for ids in lists if ids[0].startswith("ft-")]
    assert len(finetune) == 2
    assert sorted(finetune[0] + finetune[1]) == sorted(t.task_id for t in tasks if t.stage == "finetune")
    assert not set(finetune[0]) & set(finetune[1])


@pytest.mark.slow  # trains a study in packed jobs
def test_packed_job_killed_at_walltime_is_finished_by_the_next_submit(write_grid, cli, tmp_path):
    env = pbs_standin.install(tmp_path)
    grid = write_grid(base=GRID)
    study = tmp_path / "runs" / "gd"
    sub = cli("submit", grid, "--backend", "gadi", env=env)
    assert sub.returncode == 0, sub.stderr
    pre, fine = pbs_standin.jobs(env)
    assert fine["after"] == [pre["id"]] and pre["indices"] is None
    script = Path(fine["script"]).read_text()
    assert "#PBS -l ngpus=2" in script and "#PBS -l ncpus=24" in script and "#PBS -l storage=gdata/ab12+scratch/ab12" in script
    assert "submitting 0 to gadi" in cli("submit", grid, "--backend", "gadi", env=env).stdout

    proc = pbs_standin.start(env, pre, None, tmp_path)
    pbs_standin.finish(env, pre, None, proc.wait(timeout=300))
    fine_tasks = Path(fine["script"]).with_suffix(".txt").read_text().split()
    fine["state"] = "R"
    proc = pbs_standin.start(env, fine, None, tmp_path)
    pbs_standin.wait_for(lambda: any((study / "tasks" / t / "checkpoint.pt").exists() for t in fine_tasks), 240,
                         "a fine-tuning checkpoint")
    pbs_standin.kill_at_walltime(env, fine, proc)
    log = (tmp_path / f"{fine['id']}.out").read_text()
    assert "CUDA_VISIBLE_DEVICES=0" in log and "CUDA_VISIBLE_DEVICES=1" in log  # one task per GPU, both at once

    status = json.loads(cli("status", study, "--json", env=env).stdout)
    cut = [t for t in status["tasks"] if t["state"] != "done"]
    assert cut and all(t["state"] == "failed" and "TIMEOUT" in t["detail"] and t["log"] for t in cut)

    again = cli("submit", grid, "--backend", "gadi", env=env)
    assert again.returncode == 0 and f"submitting {len(cut)} to gadi" in again.stdout
    resumed = pbs_standin.jobs(env)[-1]
    assert resumed["after"] == []  # its pre-training is done
    assert [j["exit"] for j in pbs_standin.run_queued(env, tmp_path)][-1] == 0
    results = {t: read_json(study / "tasks" / t / "result.json") for t in fine_tasks}
    assert max(r["restarts"] for r in results.values()) >= 1
    assert "submitting 0 to gadi" in cli("submit", grid, "--backend", "gadi", env=env).stdout
