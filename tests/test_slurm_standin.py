"""SLURM without a cluster: golden sbatch scripts, submission, squeue parsing and cancel
against the stand-ins of tests/slurm_standin.py, an element run to its end by bash under
SLURM's environment, the element's exit and requeue decision (preemption against the time
limit), and the test cluster script's refusal of a SLURM it did not set up.

Regenerate the golden files after an intended change of the template:
    HPCXFER_REGEN_GOLDEN=1 python -m pytest tests/test_slurm_standin.py -k golden
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import slurm_standin
from test_pbs import golden

from hpcxfer.backends import slurm_element
from hpcxfer.backends.scheduler import SchedulerError
from hpcxfer.backends.slurm import SlurmBackend, parse_squeue, task_indices
from hpcxfer.fileio import iter_jsonl
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Hold

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
    # What `squeue -h -t all -O <SQUEUE_FORMAT>` printed on slurm 22.05 for a throttled array
    # (two running, the rest pending as one line), plus a plain job and someone else's.
    out = "123|2-5%2|PENDING|JobArrayTaskLimit|0\n123|0|RUNNING|None|0\n123|1|COMPLETED|None|0\n" \
          "130|N/A|PENDING|Dependency|0\n999|N/A|RUNNING|None|0\n"
    got = parse_squeue(out, {"123", "130"})
    assert {e: (h.state, h.scheduler_state, h.detail) for e, h in got.items()} == {
        "123_0": (Hold.RUNNING, "RUNNING", "slurm 123_0 RUNNING"),
        "130": (Hold.QUEUED, "PENDING", "slurm 130 PENDING (Dependency)"),
        **{f"123_{i}": (Hold.QUEUED, "PENDING", f"slurm 123_{i} PENDING (JobArrayTaskLimit)") for i in range(2, 6)}}
    with pytest.raises(SchedulerError, match="array indices"):
        parse_squeue("123|x-y|PENDING|None|0\n", {"123"})


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
    assert (study / "tasks" / fine["units"][1] / "result.json").is_file()
    assert not (study / "tasks" / fine["units"][0] / "result.json").exists()
    assert Path(fine["logs"][1]).is_file() and not Path(fine["logs"][0]).exists()


NEAR_LIMIT_S, EARLY_S = 1150, 60  # into a 20-minute job: past min(80 %, all but 10 min), and well before


@pytest.mark.parametrize("code, state, ago, spent, requeued, status, done", [
    (75, "RUNNING", NEAR_LIMIT_S, 0, "time limit", 75, False),  # USR2 at the time limit: back in the queue
    (-12, "RUNNING", NEAR_LIMIT_S, 0, "time limit", 75, False),  # USR2 before the worker's handlers: the same
    (75, "RUNNING", NEAR_LIMIT_S, 3, None, 75, False),  # max_requeues spent at the time limit: not done, not 0
    (75, "RUNNING", EARLY_S, 3, "preemption", 75, False),  # preempted: requeued without spending the budget
    (75, "CANCELLED", EARLY_S, 0, None, 75, False),  # scancel: never undone, and not done
    (73, "RUNNING", EARLY_S, 0, None, 73, False),  # another worker holds the task: not done here
    (1, "RUNNING", EARLY_S, 0, None, 1, False),  # a real failure: FAILED, not requeued
    (0, "RUNNING", EARLY_S, 0, None, 1, False),  # exit 0 without a valid result is no success
    (-12, "RUNNING", EARLY_S, 0, None, 0, True),  # USR2 after the result was written: done
])
def test_an_element_exits_0_only_when_its_unit_is_done_and_counts_only_time_limit_requeues(
        code, state, ago, spent, requeued, status, done, tmp_path, monkeypatch):
    start = (datetime.now() - timedelta(seconds=ago)).isoformat(timespec="seconds")
    stub = tmp_path / "bin" / "scontrol"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n"
                    f"[ \"$1\" = show ] && echo 'JobId=7 ArrayJobId=5 JobState={state} Reason=None "
                    f"StartTime={start} TimeLimit=00:20:00'\nexit 0\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    body = f"import os; os.kill(os.getpid(), {-code})" if code < 0 else f"raise SystemExit({code})"
    monkeypatch.setattr(slurm_element, "worker_command", lambda study, task: [sys.executable, "-c", body])
    (tmp_path / "list.txt").write_text("task-a\ntask-b\n")
    if done:
        (tmp_path / "tasks" / "task-b").mkdir(parents=True)
        (tmp_path / "tasks" / "task-b" / "result.json").write_text('{"task_id": "task-b", "val_acc": 0.5}')
    requeues = StudyPaths(tmp_path).backend("slurm").requeues
    requeues.parent.mkdir(parents=True)
    before = [{"element": "5_1", "unit": "task-b", "why": "time limit"}] * spent + \
        [{"element": "5_1", "unit": "task-b", "why": "preemption"}] * 4 + [{"element": "5_0", "why": "time limit"}] * 5
    requeues.write_text("".join(json.dumps(r) + "\n" for r in before))
    environ = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "1",
               "SLURM_RESTART_COUNT": str(spent + 4)}
    assert slurm_element.run_element(str(tmp_path), str(tmp_path / "list.txt"), 3, environ) == status
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    assert ("requeue 5_1" in calls) == bool(requeued), calls
    added = [json.loads(x) for x in requeues.read_text().splitlines()][len(before):]
    assert [r["why"] for r in added] == ([requeued] if requeued else [])


def test_an_element_that_checkpointed_is_pending_not_failed(write_grid, cli, tmp_path):
    """What squeue says of elements that ended non-zero: checkpointed (75) or left to
    another worker (73) is stopped, the next submit resumes it; any other exit failed."""
    out = "200|0|FAILED|NonZeroExitCode|19200\n200|1|FAILED|NonZeroExitCode|18688\n" \
          "200|2|FAILED|NonZeroExitCode|256\n200|3|CANCELLED|None|15\n200|4|COMPLETED|None|0\n"
    got = parse_squeue(out, {"200"})
    assert {e: (h.state, h.scheduler_state) for e, h in got.items()} == {
        "200_0": (Hold.STOPPED, "FAILED"), "200_1": (Hold.STOPPED, "FAILED"), "200_2": (Hold.FAILED, "FAILED"),
        "200_3": (Hold.STOPPED, "CANCELLED")}
    assert "checkpointed, the next submit resumes it" in got["200_0"].detail

    env = slurm_standin.install(tmp_path)
    _, study, (pre, fine) = _study(write_grid, cli, tmp_path, env, finetune={"seed": [0, 1]})
    jobs = {j["id"]: j for j in slurm_standin.jobs(env)}
    for job_id, key, code in ((pre["job_id"], "-", 0), (fine["job_id"], "0", 75), (fine["job_id"], "1", 1)):
        jobs[job_id]["elements"][key].update(state="COMPLETED" if code == 0 else "FAILED", exit=code)
        slurm_standin.save(env, jobs[job_id])
    status = {t["task_id"]: t for t in json.loads(cli("status", study, "--json", env=env).stdout)["tasks"]}
    resumed, failed = (status[t] for t in fine["units"])
    assert resumed["state"] == "pending" and "checkpointed, the next submit resumes it" in resumed["detail"]
    assert failed["state"] == "failed" and failed["scheduler_state"] == "FAILED"


def test_preemption_is_requeued_without_spending_the_budget_at_the_process_boundary(tmp_path, monkeypatch):
    """The element under the stand-ins' scontrol, with the job's StartTime and TimeLimit
    (20 minutes) as SLURM says them: a stop early on is requeued even with max_requeues 0;
    one near the time limit is not, and the element ends non-zero for afterok."""
    env = slurm_standin.install(tmp_path)
    study = tmp_path / "study"
    (study / "lists").mkdir(parents=True)
    (study / "lists" / "l.txt").write_text("ft-a\n")
    script = study / "lists" / "l.sbatch"
    code = ("import sys; from hpcxfer.backends import slurm_element as e; "
            "e.worker_command = lambda s, t: [sys.executable, '-c', 'raise SystemExit(75)']; "
            f"sys.exit(e.main([{str(study)!r}, {str(study / 'lists' / 'l.txt')!r}, '0']))")
    script.write_text(f"#!/bin/bash\n#SBATCH --time=20\n#SBATCH --output={tmp_path}/%j.log\n"
                      f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}\n")
    out = subprocess.run(["sbatch", str(script)], env={**os.environ, **env}, capture_output=True, text=True)
    job_id = out.stdout.split()[-1]
    assert slurm_standin.run_element(env, job_id, started_s_ago=EARLY_S) == 75
    (job,) = slurm_standin.jobs(env)
    assert (job["elements"]["-"]["state"], job["elements"]["-"]["restarts"]) == ("PENDING", 1)  # requeued
    assert slurm_standin.run_element(env, job_id, started_s_ago=NEAR_LIMIT_S) == 75
    (job,) = slurm_standin.jobs(env)
    assert (job["elements"]["-"]["state"], job["elements"]["-"]["restarts"]) == ("FAILED", 1)  # not requeued
    assert [r["why"] for r in iter_jsonl(StudyPaths(study).backend("slurm").requeues)] == ["preemption"]
    text = (tmp_path / f"{job_id}.log").read_text()
    assert "(preemption, not counted)" in text and "max_requeues 0: the next submit resumes it" in text, text


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
