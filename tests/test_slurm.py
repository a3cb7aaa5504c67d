"""The SLURM backend against the real one-node cluster .ci/slurm-up.sh starts: real
arrays split to MaxArraySize, afterok between stages (a failed pre-training removes its
fine-tunes unrun), a requeue mid-training that resumes from the checkpoint to the same
result, a preemption requeued without spending max_requeues, a real failure that is not
requeued, and a second submit that submits nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import prepare_study

from hpcxfer.fileio import atomic_write_json, iter_jsonl, read_json

ROOT = Path(__file__).resolve().parents[1]

NEEDS_SLURM = pytest.mark.skipif(
    not os.path.exists("/usr/bin/sbatch") and not any(
        os.access(os.path.join(p, "sbatch"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)),
    reason="SLURM is not installed (CI installs slurm-wlm and starts a cluster with .ci/slurm-up.sh)")
#: Every test here needs the cluster, and most train a real study on it.
pytestmark = [NEEDS_SLURM, pytest.mark.slurm, pytest.mark.slow]

#: One short pre-training job, then a fine-tuning array of 2 (two seeds), one CPU each;
#: 4 epochs of 500 images with one evaluation at the end, so a requeue lands mid-training.
GRID = {
    "study": "sl",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 1, "batch_size": 50, "examples_per_class": 20},
    "finetune": {"split": [0], "seed": [0, 1], "examples_per_class": [100], "epochs": 4, "batch_size": 20},
    "experiments": [{"name": "common", "protocol": ["common"]}],
    "runtime": {"threads": 1, "eval_every": 4, "group_max": 1, "device": "cpu"},  # no GPU on the test cluster
    "resources": {"cpus": 1, "mem_gb": 1, "time": "20"},
    "slurm": {"partition": "debug", "array_parallelism": 2},
}


def squeue(*job_ids: str) -> dict[str, tuple[str, str]]:
    """element -> (state, dependency) for the given array/job ids, finished ones included."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%F|%K|%T|%E"], capture_output=True,
                         text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        array_id, task, state, dep = line.split("|")
        if array_id in job_ids:
            rows[array_id if task == "N/A" else f"{array_id}_{task}"] = (state, dep)
    return rows


def restarts(element: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", "-o", element], capture_output=True, text=True).stdout
    return int(out.split("Restarts=")[1].split()[0])


def records(study: Path) -> list[dict]:
    f = study / "backends" / "slurm" / "submissions.jsonl"
    return list(iter_jsonl(f)) if f.exists() else []


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def cleanup():
    """scancel whatever a test leaves in the queue."""
    job_ids: list[str] = []
    yield job_ids
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)


def test_split_to_max_array_size_with_afterok_and_second_submit_submits_nothing(
        cluster, write_grid, cli, tmp_path, cleanup):
    n = cluster + 1  # one more fine-tuning task than an array may hold
    # A long pre-training keeps the fine-tuning arrays waiting: this test is about the queue.
    grid = write_grid({"pretrain": {"epochs": 50}, "finetune": {"seed": list(range(n))}}, base=GRID)
    first = cli("submit", grid, "--backend", "slurm")
    assert first.returncode == 0, first.stderr
    study = tmp_path / "runs" / "sl"
    recs = records(study)
    cleanup.extend(r["job_id"] for r in recs)
    assert [r["stage"] for r in recs] == ["pretrain", "finetune", "finetune"]
    pre, big, small = recs
    assert (len(big["units"]), len(small["units"])) == (cluster, 1)
    # Each chunk is renumbered from 0 and its task list maps index -> task id.
    assert big["elements"] == [f"{big['job_id']}_{i}" for i in range(cluster)]
    assert Path(big["list_file"]).read_text().split() == big["units"]
    index = [json.loads(line)["task_id"] for line in (study / "tasks.jsonl").read_text().splitlines()]
    assert sorted(big["units"] + small["units"]) == sorted(t for t in index if t.startswith("ft-"))
    # Fine-tuning waits for its pre-training (afterok), as the scheduler sees it.
    queue = squeue(pre["job_id"], big["job_id"], small["job_id"])
    deps = {e: dep for e, (state, dep) in queue.items() if e != pre["job_id"]}
    assert len(deps) == n and all(f"afterok:{pre['job_id']}" in d for d in deps.values()), queue

    second = cli("submit", grid, "--backend", "slurm")
    assert second.returncode == 0, second.stderr
    assert "submitting 0 to slurm" in second.stdout
    assert len(records(study)) == 3

    status = json.loads(cli("status", study, "--json").stdout)
    assert status["counts"]["queued"] + status["counts"]["running"] == n + 1
    assert cli("cancel", study).returncode == 0
    # A cancelled element is COMPLETING while its worker exits: running until it is gone.
    after = wait_for(lambda: (s := json.loads(cli("status", study, "--json").stdout))["counts"]["queued"]
                     == s["counts"]["running"] == 0 and s, 90, "the cancel")
    assert after["counts"]["done"] == 0


def test_requeued_task_resumes_from_its_checkpoint_to_the_same_result(cluster, write_grid, cli, tmp_path, cleanup):
    # A root no shell should ever expand: the scripts must quote it.
    root = tmp_path / "r$(touch${IFS}pwned)"
    grid = write_grid({"root": str(root)}, base=GRID)
    sub = cli("submit", grid, "--backend", "slurm", cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    study = root / "sl"
    recs = records(study)
    cleanup.extend(r["job_id"] for r in recs)
    pre, fine = recs
    assert fine["stage"] == "finetune" and len(fine["elements"]) == 2 and fine["after"] == pre["elements"]
    task, element = fine["units"][0], fine["elements"][0]

    tp = study / "tasks" / task
    wait_for(lambda: (tp / "checkpoint.pt").exists(), 180, "the first epoch's checkpoint", poll=0.2)
    assert not (tp / "result.json").exists(), "finished before it could be requeued: make it longer"
    req = subprocess.run(["scontrol", "requeue", element], capture_output=True, text=True)
    assert req.returncode == 0, req.stderr

    # Meanwhile the same task uninterrupted, in a study of its own with the same source model.
    ref_grid = write_grid({"root": str(tmp_path / "ref")}, name="ref.yaml", base=GRID)
    prepare_study(ref_grid)
    ref_study = tmp_path / "ref" / "sl"
    for name in ("model.pt", "result.json"):
        shutil.copy(study / "tasks" / pre["units"][0] / name, ref_study / "tasks" / pre["units"][0] / name)
    ref = subprocess.run([sys.executable, "-m", "hpcxfer", "run-task", str(ref_study), task],
                         env={**os.environ, "HPCXFER_THREADS": "1"}, capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    wait_for(lambda: all((study / "tasks" / t / "result.json").exists() for r in recs for t in r["units"]),
             240, "every task of the study")
    got, want = read_json(tp / "result.json"), read_json(ref_study / "tasks" / task / "result.json")
    assert got["restarts"] >= 1 and restarts(element) >= 1
    assert (got["val_acc"], got["val_loss"]) == (want["val_acc"], want["val_loss"])
    epochs = [r["epoch"] for r in iter_jsonl(tp / "metrics.jsonl")]
    assert epochs == sorted(set(epochs)), "a resumed task wrote two records for one epoch"
    assert not list(tmp_path.rglob("pwned")) and not (Path.cwd() / "pwned").exists()

    again = cli("submit", grid, "--backend", "slurm")
    assert "submitting 0 to slurm" in again.stdout and len(records(study)) == len(recs)
    table = cli("collect", study, "--format", "csv")
    assert table.returncode == 0 and "common" in table.stdout


def test_usr2_to_the_job_step_checkpoints_and_the_element_requeues_itself(cluster, write_grid, cli, tmp_path,
                                                                         cleanup):
    """What `--signal=USR2@N` does, sent now: USR2 to the job's steps (not its batch shell)
    reaches the worker under srun, which checkpoints; the element requeues itself and its
    next run resumes. A minute into a 20-minute job the stop is a preemption, not the time
    limit, so it is requeued even with max_requeues 0 and spends nothing."""
    grid = write_grid({"finetune": {"seed": [0]}, "slurm": {**GRID["slurm"], "max_requeues": 0}}, base=GRID)
    study = tmp_path / "runs" / "sl"
    prepare_study(grid)
    assert cli("submit", grid, "--backend", "slurm").returncode == 0
    recs = records(study)
    cleanup.extend(r["job_id"] for r in recs)
    fine = recs[-1]
    (task,), (element,) = fine["units"], fine["elements"]
    tp = study / "tasks" / task
    wait_for(lambda: (tp / "checkpoint.pt").exists(), 180, "the first epoch's checkpoint", poll=0.2)
    assert not (tp / "result.json").exists(), "finished before the signal: make it longer"
    sig = subprocess.run(["scancel", "--signal=USR2", element], capture_output=True, text=True)
    assert sig.returncode == 0, sig.stderr
    wait_for(lambda: (tp / "result.json").exists(), 240, "the requeued task's result")
    assert read_json(tp / "result.json")["restarts"] >= 1 and restarts(element) == 1
    text = Path(fine["logs"][0]).read_text()
    assert f"{task} checkpointed; requeuing {element} (preemption, not counted)" in text, text
    assert [r["why"] for r in iter_jsonl(study / "backends" / "slurm" / "requeues.jsonl")] == ["preemption"]


def test_a_failed_pretraining_removes_its_fine_tunes_unrun(cluster, write_grid, tmp_path, cleanup):
    """afterok with --kill-on-invalid-dep=yes: a pre-training element that ends non-zero
    (here its task.json is damaged, so the worker refuses it) never starts its fine-tunes;
    SLURM removes them (CANCELLED, DependencyNeverSatisfied) and they leave no trace."""
    from hpcxfer.backends.slurm import SlurmBackend
    from hpcxfer.grid import expand, load_grid
    from hpcxfer.grid.groups import Unit

    grid_file = write_grid({"finetune": {"seed": [0, 1], "epochs": 1}}, base=GRID)
    paths = prepare_study(grid_file)
    tasks = expand(load_grid(grid_file))
    pre = next(t for t in tasks if t.stage == "pretrain")
    paths.task(pre.task_id).config.write_text("{")
    SlurmBackend().submit(paths, load_grid(grid_file), [Unit.of_task(t) for t in tasks])
    first, fine = records(paths.dir)
    cleanup.extend([first["job_id"], fine["job_id"]])
    assert fine["after"] == first["elements"]
    wait_for(lambda: squeue(first["job_id"]).get(first["job_id"], ("",))[0] == "FAILED", 120, "the pre-training")
    gone = wait_for(lambda: (q := squeue(fine["job_id"])) and all(s == "CANCELLED" for s, _ in q.values()) and q,
                    60, "the fine-tunes to be removed")
    reasons = subprocess.run(["squeue", "-h", "-t", "all", "-j", fine["job_id"], "-o", "%r"], capture_output=True,
                             text=True).stdout.split()
    assert gone and set(reasons) == {"DependencyNeverSatisfied"}, (gone, reasons)
    for unit, log in zip(fine["units"], fine["logs"]):
        assert not Path(log).exists() and not (paths.task(unit).dir / "metrics.jsonl").exists()


def test_real_failure_is_not_requeued_and_status_names_the_log(cluster, write_grid, cli, tmp_path, cleanup):
    grid = write_grid({"finetune": {"seed": 0, "epochs": 1}}, base=GRID)
    study = tmp_path / "runs" / "sl"
    prepare_study(grid)
    # The pre-training "finished" without its model: the fine-tuning task fails for real.
    pre = next(json.loads(line)["task_id"] for line in (study / "tasks.jsonl").read_text().splitlines()
               if line.startswith('{') and '"pretrain"' in line)
    atomic_write_json(study / "tasks" / pre / "result.json", {"task_id": pre, "val_acc": 0.0, "val_loss": 0.0})

    assert cli("submit", grid, "--backend", "slurm").returncode == 0
    (rec,) = records(study)
    cleanup.append(rec["job_id"])
    element = rec["elements"][0]
    wait_for(lambda: squeue(rec["job_id"]).get(element, ("",))[0] == "FAILED", 90, "the task to fail")
    time.sleep(3)  # ArrayTask requeues before it exits, so a requeue would show by now
    assert squeue(rec["job_id"])[element][0] == "FAILED" and restarts(element) == 0
    status = json.loads(cli("status", study, "--json").stdout)
    (task,) = [t for t in status["tasks"] if t["task_id"] == rec["units"][0]]
    assert task["state"] == "failed" and Path(task["log"]).is_file()
    assert "pre-trained model" in task["detail"]


def test_dry_run_writes_every_script_and_submits_nothing(cluster, tmp_path):
    from hpcxfer.backends.slurm import SlurmBackend
    from hpcxfer.grid import expand
    from hpcxfer.grid.groups import Unit
    from hpcxfer.grid.schema import Grid
    from hpcxfer.layout import StudyPaths
    from hpcxfer.study import write_study

    grid = Grid.model_validate({**GRID, "root": str(tmp_path), "finetune": {**GRID["finetune"],
                                                                            "seed": list(range(cluster + 1))}})
    tasks = expand(grid)
    paths = StudyPaths.of(tmp_path, "sl")
    write_study(paths, grid, tasks)
    before = sorted(tmp_path.rglob("*"))
    sub = SlurmBackend().submit(paths, grid, [Unit.of_task(t) for t in tasks], dry_run=True)
    assert sub.commands == [f"sbatch {s}" for s in sub.scripts] and not sub.job_ids and not records(paths.dir)
    assert sorted(tmp_path.rglob("*")) == before  # the scripts are returned, not written
    pre, big, small = (sub.files[s] for s in sub.scripts)
    assert "#SBATCH --array" not in pre and f"#SBATCH --array=0-{cluster - 1}%2" in big
    assert "#SBATCH --array" not in small  # the one task left over is a plain job
    for text in (big, small):
        assert "#SBATCH --dependency=afterok:<pretrain-0[0]>" in text.replace("'", "")
    for flag in ("--partition=debug", "--signal=USR2@90", "--kill-on-invalid-dep=yes", "--cpus-per-task=1",
                 "--mem=1024M", "--time=20", "--open-mode=append", "--requeue"):
        assert f"#SBATCH {flag}" in pre


def test_submit_wait_stays_until_the_scheduler_is_done(cluster, write_grid, cli, tmp_path, cleanup):
    grid = write_grid({"root": str(tmp_path / "runs"), "finetune": {"seed": [0], "epochs": 1,
                                                                    "examples_per_class": [10]}}, base=GRID)
    out = cli("submit", grid, "--backend", "slurm", "--wait", cwd=tmp_path)
    study = tmp_path / "runs" / "sl"
    cleanup.extend(r["job_id"] for r in records(study))
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(cli("status", study, "--json").stdout)
    assert status["counts"]["done"] == 2 and sum(status["counts"].values()) == 2


def test_a_root_with_percent_signs_keeps_the_logs_in_that_folder(cluster, write_grid, cli, tmp_path, cleanup):
    """SLURM expands %x, %u, %b... in --output/--error: the root's own `%` are escaped, so
    an array's logs land in the literal folder and nowhere else."""
    root = tmp_path / "r 50%x %u %% %b %"
    grid = write_grid({"root": str(root), "finetune": {"seed": [0, 1], "epochs": 1}}, base=GRID)
    study = root / "sl"
    prepare_study(grid)
    # The pre-training "finished" without its model: each fine-tuning task fails at once.
    pre = next(json.loads(line)["task_id"] for line in (study / "tasks.jsonl").read_text().splitlines()
               if '"pretrain"' in line)
    atomic_write_json(study / "tasks" / pre / "result.json", {"task_id": pre, "val_acc": 0.0, "val_loss": 0.0})
    sub = cli("submit", grid, "--backend", "slurm", cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    (rec,) = records(study)
    cleanup.append(rec["job_id"])
    assert len(rec["elements"]) == 2  # an array: %A_%a in the patterns
    wait_for(lambda: all(s[0] == "FAILED" for s in squeue(rec["job_id"]).values())
             and len(squeue(rec["job_id"])) == 2, 120, "both elements to fail")
    for element, log in zip(rec["elements"], rec["logs"]):
        assert Path(log) == study / "backends" / "slurm" / "logs" / f"{element}.log", log
        text = wait_for(lambda: Path(log).is_file() and Path(log).read_text(), 30, f"{log}")
        assert "worker exited" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([root.name, "grid.yaml"])
    assert sorted(p.name for p in root.iterdir()) == ["sl"]
