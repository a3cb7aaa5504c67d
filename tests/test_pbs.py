"""PBS Pro at the process boundary (no PBS server can run here): golden rendered scripts,
and the rendered scripts run by bash under PBS's environment with qsub/qstat stand-ins,
training real tasks to completion.

Regenerate the golden files after an intended change of the templates:
    HPCXFER_REGEN_GOLDEN=1 python -m pytest tests/test_pbs.py tests/test_gadi.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pbs_standin
import pytest

import hpcxfer
from hpcxfer.backends import records
from hpcxfer.backends.pbs import PbsBackend
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Held, Hold

GOLDEN = Path(__file__).parent / "golden"

GRID = {
    "study": "pb",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 1, "batch_size": 50, "examples_per_class": 20},
    "finetune": {"split": [0], "seed": [0, 1, 2], "examples_per_class": [10], "epochs": 1, "batch_size": 10,
                 "protocol": "common"},
    "runtime": {"threads": 1, "group_max": 1},
    "resources": {"cpus": 2, "mem_gb": 3, "gpus": 1, "time": "1:30:00"},
    "pbs": {"queue": "gpu", "project": "ab12"},
}


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME, machine-specific parts replaced; HPCXFER_REGEN_GOLDEN=1 rewrites it."""
    text = text.replace(sys.executable, "PYTHON").replace(hpcxfer.__version__, "VERSION")
    path = GOLDEN / name
    if os.environ.get("HPCXFER_REGEN_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed; if intended, regenerate (see this file's docstring)"


def test_rendered_scripts_match_golden_files():
    grid = Grid.model_validate({**GRID, "runtime": {}})  # threads: resources.cpus
    paths = StudyPaths(Path("/scratch/ab12/runs/pb"))
    backend = PbsBackend()
    lists = paths.backend("pbs").dir / "lists"
    golden("pbs_array.sh", backend.render_script(paths, grid, "finetune", ["ft-a", "ft-b", "ft-c"],
                                                 lists / "001-finetune-0.txt", ["100[0].pbs", "100[1].pbs"]))
    golden("pbs_single.sh", backend.render_script(paths, grid, "pretrain", ["pt-s0-abc"],
                                                  lists / "000-pretrain-0.txt", []))


def test_grid_values_cannot_reach_a_shell(write_grid, cli, tmp_path):
    bad = write_grid({**GRID, "pbs": {"queue": "gpu; touch pwned"}}, base=GRID)
    out = cli("submit", bad, "--backend", "pbs", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "pbs.queue" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.slow  # trains a study in PBS array jobs
def test_arrays_run_to_completion_under_pbs_environment(write_grid, cli, tmp_path):
    env = pbs_standin.install(tmp_path, max_array_size=2)
    root = tmp_path / "r$(touch${IFS}pwned)"  # quoted everywhere, or this file appears
    grid = write_grid({"root": str(root)}, base=GRID)
    study = root / "pb"

    dry = cli("submit", grid, "--backend", "pbs", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "#PBS -J 0-1" in dry.stdout and "qsub " in dry.stdout and pbs_standin.jobs(env) == []

    sub = cli("submit", grid, "--backend", "pbs", env=env)
    assert sub.returncode == 0, sub.stderr
    queued = pbs_standin.jobs(env)
    # 1 pre-training job; 3 fine-tuning tasks split to max_array_size 2: an array of 2 and
    # a plain job (an array needs two indices), both after the pre-training.
    assert [j["indices"] for j in queued] == [None, [0, 1], None]
    assert queued[1]["after"] == queued[2]["after"] == [queued[0]["id"]]
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["queued"] == 4
    again = cli("submit", grid, "--backend", "pbs", env=env)
    assert "submitting 0 to pbs" in again.stdout and len(pbs_standin.jobs(env)) == 3

    finished = pbs_standin.run_queued(env, tmp_path)
    assert [j["exit"] for j in finished] == [0, 0, 0]
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["done"] == 4
    for t in status["tasks"]:
        result = json.loads(Path(t["dir"], "result.json").read_text())
        assert 0 <= result["val_acc"] <= 1
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()
    assert "submitting 0 to pbs" in cli("submit", grid, "--backend", "pbs", env=env).stdout
    table = cli("collect", study, "--format", "csv")
    assert table.returncode == 0 and "common" in table.stdout


@pytest.mark.parametrize("n,expected", [(1, None), (2, "0-1")])
def test_a_single_task_is_a_plain_job(n, expected):
    opts = PbsBackend().options(StudyPaths(Path("/s/x")), Grid.model_validate(GRID), "finetune", n, [])
    assert opts["-J"] == expected


@pytest.mark.parametrize("section,field", [
    ({"slurm": {"partitoin": "debug"}}, "slurm"),
    ({"slurm": {"partition": "debug;touch pwned"}}, "slurm.partition"),
    ({"gadi": {"queue": "normal"}}, "gadi.queue"),
    ({"gadi": {"storage": "gdata/ab12 scratch/x"}}, "gadi.storage"),
    ({"resources": {"time": "1h"}}, "resources.time"),
])
def test_scheduler_sections_reject_unknown_keys_and_unsafe_values(section, field, write_grid, cli, tmp_path):
    out = cli("plan", write_grid(section, base=GRID))
    assert out.returncode == 2 and field in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_default_backend_is_the_scheduler_on_path(tmp_path, monkeypatch):
    from hpcxfer.backends import default_backend

    env = pbs_standin.install(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"].split(os.pathsep)[0])
    assert default_backend() == "pbs"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert default_backend() == "local"


def test_jobs_purged_from_the_server_count_as_not_held(tmp_path, monkeypatch):
    env = pbs_standin.install(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("PBS_STANDIN_DIR", env["PBS_STANDIN_DIR"])
    paths = StudyPaths(tmp_path / "study")
    f = paths.backend("pbs").submissions
    f.parent.mkdir(parents=True)
    # Records as submits before `units` wrote them: the units under "tasks", one "log".
    f.write_text(json.dumps({"job_id": "7.pbs", "elements": ["7.pbs"], "tasks": ["pt-a"], "log": "x"}) + "\n")
    assert PbsBackend().view(paths) == {}  # qstat: Unknown Job Id 7.pbs, exit 153
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -J 0-1\ntrue\n")
    job_id = subprocess.run(["qsub", str(script)], capture_output=True, text=True, env={**os.environ, **env}).stdout.strip()
    with f.open("a") as out:
        out.write(json.dumps({"job_id": job_id, "elements": [job_id.replace("[]", "[1]")], "tasks": ["ft-b"],
                              "log": "logs"}) + "\n")
    view = PbsBackend().view(paths)
    assert view == {"ft-b": Held(Hold.QUEUED, job_id.replace("[]", "[1]"), "Q",
                                 f"pbs {job_id.replace('[]', '[1]')} Q", "logs")}


def test_old_and_new_submission_records_load_alike(tmp_path):
    paths = StudyPaths(tmp_path / "study")
    new = records.JobRecord("9[].pbs", ("9[0].pbs", "9[1].pbs"), ("logs", "logs"), ("ft-a", "g-1"), "finetune",
                            "s.pbs", "l.txt", ("8.pbs",), {"g-1": ["ft-b", "ft-c"]}, 5.0)
    records.append(paths, "pbs", new)
    line = json.loads(paths.backend("pbs").submissions.read_text())
    assert line["units"] == ["ft-a", "g-1"] and "tasks" not in line
    old = {**line, "tasks": line.pop("units"), "log": "logs"}
    del old["logs"]
    paths.backend("pbs").submissions.write_text(json.dumps(old) + "\n")
    (loaded,) = records.load(paths, "pbs")
    assert loaded == new
    assert {t: (r.job_id, i) for t, (r, i) in records.latest_by_task(paths, "pbs").items()} == {
        "ft-a": ("9[].pbs", 0), "ft-b": ("9[].pbs", 1), "ft-c": ("9[].pbs", 1)}


def test_a_subjob_that_checkpointed_at_walltime_is_pending_not_failed(write_grid, cli, tmp_path):
    """Exit 75: the worker checkpointed on PBS's SIGTERM at walltime and exited; the next
    submit resumes it. 271 (killed by SIGTERM before it could) is a failure."""
    env = pbs_standin.install(tmp_path)
    grid = write_grid({"runtime": {"threads": 1, "group_max": 1}}, base=GRID)
    assert cli("submit", grid, "--backend", "pbs", env=env).returncode == 0
    study = tmp_path / "runs" / "pb"
    _, fine = (json.loads(x) for x in (study / "backends" / "pbs" / "submissions.jsonl").read_text().splitlines())
    spooled = pbs_standin.jobs(env)
    spooled[0].update(state="F", exit=0)
    spooled[1].update(state="F", exit=271, subjobs={"0": {"state": "X", "exit": 75}, "1": {"state": "X", "exit": 271},
                                                    "2": {"state": "X", "exit": 0}})
    for job in spooled:
        pbs_standin.save(env, job)
    status = {t["task_id"]: t for t in json.loads(cli("status", study, "--json", env=env).stdout)["tasks"]}
    checkpointed, killed, _ = (status[u] for u in fine["units"])
    assert checkpointed["state"] == "pending", checkpointed
    assert "exit status 75: checkpointed, the next submit resumes it" in checkpointed["detail"]
    assert killed["state"] == "failed" and "TIMEOUT" in killed["detail"], killed
