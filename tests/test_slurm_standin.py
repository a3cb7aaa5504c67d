"""SLURM without a cluster: golden sbatch scripts, submission, squeue parsing and cancel
against the stand-ins of tests/slurm_standin.py, an element run to its end by bash under
SLURM's environment, the element's requeue decision, the test cluster script's refusal of
a SLURM it did not set up, and no use of submitit's private names.

Regenerate the golden files after an intended change of the template:
    HPCXFER_REGEN_GOLDEN=1 python -m pytest tests/test_slurm_standin.py -k golden
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import slurm_standin
from hpcxfer.backends import slurm_element
from hpcxfer.backends.scheduler import SchedulerError
from hpcxfer.backends.slurm import SlurmBackend, parse_squeue, task_indices
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from test_pbs import golden

ROOT = Path(__file__).resolve().parents[1]

GRID = {
    "study": "sl",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 1, "batch_size": 50, "examples_per_class": 20},
    "finetune": {"split": [0], "seed": [0, 1, 2, 3], "examples_per_class": [10], "epochs": 1, "batch_size": 10,
                 "protocol": "common"},
    "runtime": {"threads": 1, "group_max": 1},
    "resources": {"cpus": 1, "mem_gb": 1, "time": "20"},
    "slurm": {"partition": "debug", "array_parallelism": 2},
}


def test_rendered_scripts_match_golden_files():
    grid = Grid.model_validate({**GRID, "runtime": {}, "resources": {"cpus": 2, "mem_gb": 3, "gpus": 1,
                                                                     "time": "1:30:00"},
                                "slurm": {"partition": "gpu", "account": "ab12", "qos": "normal",
                                          "constraint": "v100", "array_parallelism": 2, "max_requeues": 3}})
    paths = StudyPaths(Path("/scratch/ab12/runs 50%/sl"))  # the root's own % is escaped in --output
    backend = SlurmBackend()
    for name, stage, ids, after in (("slurm_array.sh", "finetune", ["ft-a", "ft-b", "ft-c"], ["100_0", "100_1"]),
                                    ("slurm_single.sh", "pretrain", ["pt-s0-abc"], [])):
        golden(name, backend.render_script(paths, grid, stage, ids, paths.backend("slurm").task_list(len(after), stage, 0), after))


@pytest.mark.parametrize("field, indices", [
    ("N/A", None), ("4", [4]), ("4-7%2", [4, 5, 6, 7]), ("[4-7%2]", [4, 5, 6, 7]), ("0-2,5,8-9", [0, 1, 2, 5, 8, 9]),
    ("1-9:4", [1, 5, 9]), ("[0-3,8]%1", [0, 1, 2, 3, 8])])
def test_squeue_array_ranges(field, indices):
    assert task_indices(field) == indices


def test_squeue_lines_become_elements():
    # What `squeue -h -t all -o %F|%K|%T|%r` printed on slurm 22.05 for a throttled array
    # (two running, the rest pending as one line), plus a plain job and someone else's.
    out = "123|2-5%2|PENDING|JobArrayTaskLimit\n123|0|RUNNING|None\n123|1|COMPLETED|None\n" \
          "130|N/A|PENDING|Dependency\n999|N/A|RUNNING|None\n"
    assert parse_squeue(out, {"123", "130"}) == {
        "123_0": ("RUNNING", ""), "123_1": ("COMPLETED", ""), "130": ("PENDING", "Dependency"),
        **{f"123_{i}": ("PENDING", "JobArrayTaskLimit") for i in range(2, 6)}}
    with pytest.raises(SchedulerError, match="array indices"):
        parse_squeue("123|x-y|PENDING|None\n", {"123"})


def _study(write_grid, cli, tmp_path, env, **over):
    grid = write_grid(over, base=GRID)
    out = cli("submit", grid, "--backend", "slurm", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    study = tmp_path / "runs" / "sl"
    recs = [json.loads(x) for x in (study / "backends" / "slurm" / "submissions.jsonl").read_text().splitlines()]
    return grid, study, recs


def test_submit_splits_arrays_waits_for_pretraining_and_cancel_reaches_scancel(write_grid, cli, tmp_path):
    env = slurm_standin.install(tmp_path, max_array_size=3)
    grid, study, recs = _study(write_grid, cli, tmp_path, env)
    pre, big, small = recs
    assert [r["stage"] for r in recs] == ["pretrain", "finetune", "finetune"]
    assert pre["elements"] == [pre["job_id"]] and big["elements"] == [f"{big['job_id']}_{i}" for i in range(3)]
    assert small["elements"] == [small["job_id"]]
    jobs = {j["id"]: j for j in slurm_standin.jobs(env)}
    assert jobs[big["job_id"]]["opts"]["--array"] == "0-2%2" and "--array" not in jobs[small["job_id"]]["opts"]
    assert jobs[big["job_id"]]["after"] == jobs[small["job_id"]]["after"] == [pre["job_id"]]
    for rec in recs:
        assert jobs[rec["job_id"]]["opts"]["--signal"] == "USR2@90" and Path(rec["script"]).is_file()
    assert big["logs"] == [str(study / "backends" / "slurm" / "logs" / f"{e}.log") for e in big["elements"]]

    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["queued"] == 5  # the pending array came from squeue as one line: 0-2%2
    assert {t["job"] for t in status["tasks"]} == {*pre["elements"], *big["elements"], *small["elements"]}
    assert "submitting 0 to slurm" in cli("submit", grid, "--backend", "slurm", env=env).stdout

    assert cli("cancel", study, env=env).returncode == 0
    (argv,) = slurm_standin.calls(env, "scancel")
    assert sorted(argv) == sorted([*pre["elements"], *big["elements"], *small["elements"]])
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert status["counts"]["pending"] == 5 and not status["counts"]["queued"]  # cancelled: not done
    assert all("CANCELLED" in t["detail"] for t in status["tasks"]), status["tasks"]


@pytest.mark.slow  # two real workers, ~10 s each on one core
def test_elements_run_to_their_end_under_slurms_environment(write_grid, cli, tmp_path):
    env = slurm_standin.install(tmp_path)
    grid, study, (pre, fine) = _study(write_grid, cli, tmp_path, env, finetune={"seed": [0, 1]})
    assert slurm_standin.run_element(env, pre["job_id"]) == 0
    assert slurm_standin.run_element(env, fine["job_id"], "1") == 0  # index 1: line 2 of the task list
    status = json.loads(cli("status", study, "--json", env=env).stdout)
    assert (status["counts"]["done"], status["counts"]["queued"]) == (2, 1), status["counts"]
    assert (study / "tasks" / fine["tasks"][1] / "result.json").is_file()
    assert not (study / "tasks" / fine["tasks"][0] / "result.json").exists()
    assert Path(fine["logs"][1]).is_file() and not Path(fine["logs"][0]).exists()


@pytest.mark.parametrize("code, state, restarts, requeued, status, done", [
    (75, "RUNNING", 0, True, 0, False),     # USR2 at the time limit, or USR1: back in the queue
    (-12, "RUNNING", 0, True, 0, False),    # USR2 before the worker's handlers: nothing lost either
    (75, "RUNNING", 3, False, 0, False),    # max_requeues reached
    (75, "CANCELLED", 0, False, 0, False),  # scancel: never undone
    (73, "RUNNING", 0, False, 0, False),    # another worker holds the task
    (1, "RUNNING", 0, False, 1, False),     # a real failure: FAILED, not requeued
    (-12, "RUNNING", 0, False, 0, True),    # USR2 after the result was written: done
])
def test_an_element_requeues_itself_only_after_a_checkpoint_while_running(
        code, state, restarts, requeued, status, done, tmp_path, monkeypatch):
    stub = tmp_path / "bin" / "scontrol"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n"
                    f"[ \"$1\" = show ] && echo 'JobId=7 ArrayJobId=5 JobState={state} Reason=None'\nexit 0\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    body = f"import os; os.kill(os.getpid(), {-code})" if code < 0 else f"raise SystemExit({code})"
    monkeypatch.setattr(slurm_element, "worker_command", lambda study, task: [sys.executable, "-c", body])
    (tmp_path / "list.txt").write_text("task-a\ntask-b\n")
    if done:
        (tmp_path / "tasks" / "task-b").mkdir(parents=True)
        (tmp_path / "tasks" / "task-b" / "result.json").write_text('{"task_id": "task-b", "val_acc": 0.5}')
    environ = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "1",
               "SLURM_RESTART_COUNT": str(restarts)}
    assert slurm_element.run_element(str(tmp_path), str(tmp_path / "list.txt"), 3, environ) == status
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    assert ("requeue 5_1" in calls) == requeued, calls


def test_no_private_submitit_names():
    """Nothing in the package reaches into submitit's private names (`_make_sbatch_string`,
    `ex._submitit_command_str`, `submitit.core._submit`...)."""
    private = re.compile(r"submitit(\.\w+)*\._\w+|from submitit[\w.]* import [^\n]*\b_\w+|\._submitit\w*")
    hits = [f"{f.relative_to(ROOT)}: {m.group(0)}" for f in sorted((ROOT / "hpcxfer").rglob("*.py"))
            for m in private.finditer(f.read_text())]
    assert not hits, hits
    assert private.search("from submitit.slurm.slurm import _make_sbatch_string")  # the pattern itself works
    assert private.search("ex._submitit_command_str")


def _slurm_up(tmp_path: Path, conf_text: str | None, **env) -> subprocess.CompletedProcess:
    folder = tmp_path / "cluster"
    folder.mkdir(parents=True, exist_ok=True)
    if conf_text is not None:
        (folder / "slurm.conf").write_text(conf_text)
    return subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "HPCXFER_SLURM_DIR": str(folder), **env})


def test_cluster_script_refuses_a_slurm_it_did_not_set_up(tmp_path):
    foreign = "ClusterName=site\nSlurmctldHost=head\nStateSaveLocation=/var/spool/slurmctld\n"
    out = _slurm_up(tmp_path, foreign)
    assert out.returncode == 2 and out.stdout == "", out
    (line,) = out.stderr.splitlines()
    assert "slurm.conf was not written by this script" in line and str(tmp_path) in line
    assert (tmp_path / "cluster" / "slurm.conf").read_text() == foreign
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir()) == ["slurm.conf"]  # nothing else made
    bad = _slurm_up(tmp_path / "b", None, HPCXFER_SLURM_PORT="22; touch pwned")
    assert bad.returncode == 2 and "HPCXFER_SLURM_PORT" in bad.stderr and not list(tmp_path.rglob("pwned"))


def test_cluster_script_names_no_system_slurm_path():
    """Its config, state, pid files and logs are its own: nothing under the system's."""
    text = (ROOT / ".ci" / "slurm-up.sh").read_text() + (ROOT / ".ci" / "slurm-down.sh").read_text()
    system = re.compile(r"(^|[\s\"'=])(/etc/slurm|/var/spool/slurm|/run/slurm|/var/log/slurm)")
    assert not system.search(text), system.search(text)
    assert system.search("CONF=/etc/slurm/slurm.conf") and not system.search("$DIR/run/slurmd.pid")
    assert "sacct" not in text and len((ROOT / ".ci" / "slurm-up.sh").read_text().splitlines()) < 200
