"""A search that runs on without a person: `hpcxfer tune` once, then promotion jobs decide
each rung and submit the next (a real SLURM run on the one-node test cluster; PBS and Gadi
at the process boundary). Decisions are made once, written before they are applied, and
re-applied by every step; a search whose settings changed is refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pbs_standin
import pytest
import yaml
from conftest import TINY_GRID, merge, prepare_study

from hpcxfer.layout import StudyPaths

#: Four protocols of one size, one split, 3 epochs; rungs after epochs 1 and 2 (eta 2): 4 to
#: epoch 1, 2 to epoch 2, 1 to the end.
SEARCH = merge(TINY_GRID, {
    "pretrain": {"epochs": 1},
    "experiments": [{"name": "named", "protocol": ["scratch", "common"]},
                    {"name": "n", "transfer_layers": [3, 5], "frozen_layers": 0, "high_lr_layers": 8}],
    "search": {"eta": 2, "rungs": [1, 2]},
})
SLURM_GRID = merge(SEARCH, {
    "runtime": {"threads": 1, "device": "cpu"},  # no GPU on the test cluster
    "resources": {"cpus": 1, "mem_gb": 1, "time": "20"},
    "slurm": {"partition": "debug"},
})
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "epochs")

NEEDS_SLURM = pytest.mark.skipif(
    not any(os.access(os.path.join(p, "sbatch"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)
            + ["/usr/bin"]), reason="SLURM is not installed (CI starts a cluster with .ci/slurm-up.sh)")


def decisions(paths: StudyPaths) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(paths.tune_dir.glob("rung-*.json"))]


def finalists(rung: dict) -> list[str]:
    return [t for s in rung["sizes"]["10"] if s["kept"] for t in s["tasks"]]


def poll(predicate, timeout: float, what: str, every: float = 2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@NEEDS_SLURM
@pytest.mark.slurm
@pytest.mark.slow
def test_promotion_jobs_run_a_search_on_slurm_with_nobody_calling_tune_again(cluster, write_grid, cli, tmp_path):
    grid = write_grid(SLURM_GRID)
    first = cli("tune", grid, "--backend", "slurm")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "promotion job" in first.stdout, first.stdout
    paths = StudyPaths.of(tmp_path / "runs", "tiny")
    grid.unlink()  # the promotion jobs read the study's own copy, never the user's file
    try:
        def ended():
            done = decisions(paths)
            return len(done) == 2 and all(paths.task(t).result.is_file() for t in finalists(done[1])) and done

        rung0, rung1 = poll(ended, 1500, "the finalists' result.json, with no tune in between")
    finally:
        print(subprocess.run(["squeue", "-t", "all"], capture_output=True, text=True, check=False).stdout)
        subprocess.run(["scancel", "-n", f"hpcxfer-tune-{paths.name}"], capture_output=True, check=False)
    # Both rungs were decided by promotion jobs, each naming its SLURM job.
    chain = [json.loads(line) for line in paths.promotions.read_text().splitlines()]
    for rung in (rung0, rung1):
        by = rung["decided_by"]
        assert by["by"] == "promotion job" and by["job"].startswith("slurm:"), by
        assert by["job"].removeprefix("slurm:") in {c["job"] for c in chain}
    assert rung0["decided_by"]["job"] != rung1["decided_by"]["job"]
    # The promotion job followed its rung's jobs: afterany on every element holding the stage.
    for c in chain:
        assert "#SBATCH --dependency=afterany:" + ":".join(c["after"]) in Path(c["script"]).read_text()
        assert f"-P -m hpcxfer.tune.promote {paths.dir}" in Path(c["script"]).read_text()
    assert [s["kept"] for s in rung0["sizes"]["10"]] == [True, True, False, False]
    assert [s["kept"] for s in rung1["sizes"]["10"]] == [True, False]
    pruned = [t for r in (rung0, rung1) for s in r["sizes"]["10"] if not s["kept"] for t in s["tasks"]]
    assert len(pruned) == 3
    for t in pruned:
        tp = paths.task(t)
        assert tp.pruned.is_file() and not tp.rung.exists() and not tp.result.exists()
    (winner,) = finalists(rung1)
    print("\n".join(p.name + ": " + p.read_text() for p in sorted(paths.tune_dir.glob("rung-*.json"))))

    # The same task run by a plain submit of the winner's protocol alone, on the local
    # backend: the same task id, the same metrics, bit for bit.
    config = json.loads(paths.task(winner).config.read_text())
    protocol = {k: config[k] for k in ("transfer_layers", "frozen_layers", "high_lr_layers", "initial_decay_epochs")}
    plain = write_grid(merge(SEARCH, {"study": "plain", "search": None,
                                      "experiments": [{"name": "winner", **protocol}]}), name="plain.yaml")
    ran = cli("submit", plain, "--backend", "local", "--wait", timeout=900)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    theirs = json.loads(StudyPaths.of(tmp_path / "runs", "plain").task(winner).result.read_text())
    ours = json.loads(paths.task(winner).result.read_text())
    assert {k: ours[k] for k in METRICS} == {k: theirs[k] for k in METRICS}


def _first_stage(tmp_path, write_grid, cli, backend: str, over: dict) -> tuple[StudyPaths, dict, list[dict]]:
    env = pbs_standin.install(tmp_path)
    grid = write_grid(merge(SEARCH, over))
    out = subprocess.run([sys.executable, "-m", "hpcxfer", "tune", str(grid), "--backend", backend],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    paths = StudyPaths.of(tmp_path / "runs", "tiny")
    return paths, env, pbs_standin.jobs(env)


@pytest.mark.slow
def test_pbs_promotion_job_follows_the_rungs_arrays_afterany(tmp_path, write_grid, cli):
    paths, env, jobs = _first_stage(tmp_path, write_grid, cli, "pbs",
                                    {"pbs": {"queue": "workq", "project": "p1"}, "resources": {"gpus": 0}})
    *stages, promotion = jobs
    assert [len(j["indices"] or [0]) for j in stages] == [1, 4]  # the pre-training, 4 members to epoch 1
    script = Path(promotion["script"]).read_text()
    arrays = [j["id"] for j in stages]
    assert arrays[1].endswith("[].pbs")
    assert re.search(r"^#PBS -W depend='?afterany:" + re.escape(":".join(sorted(arrays))) + "'?$", script, re.MULTILINE), script
    for line in ("#PBS -l select=1:ncpus=1:mem=2048mb", "#PBS -l walltime=00:15:00", "#PBS -q workq", "#PBS -P p1",
                 'export HPCXFER_JOB_ID="pbs:$PBS_JOBID"',
                 f"exec {sys.executable} -P -m hpcxfer.tune.promote {paths.dir}"):
        assert line in script.splitlines(), (line, script)
    (rec,) = [json.loads(line) for line in paths.promotions.read_text().splitlines()]
    assert rec["job"] == promotion["id"] and rec["stage"] == 0 and rec["script"] == promotion["script"]
    # Each member asked to stop at the first rung; the study records the grid and the search.
    members = [t for t in paths.tasks_dir.iterdir() if t.name.startswith("ft-")]
    assert len(members) == 4 and all(json.loads((t / "rung.json").read_text()) == {"stop_after": 1} for t in members)
    assert yaml.safe_load(paths.search_grid.read_text())["search"] == {"eta": 2, "rungs": [1, 2]}
    # A second tune while the stage is queued submits nothing new: no second promotion job.
    again = subprocess.run([sys.executable, "-m", "hpcxfer", "tune", str(tmp_path / "grid.yaml"), "--backend", "pbs"],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert len(pbs_standin.jobs(env)) == len(jobs) and f"promotion job {promotion['id']} already" in again.stdout
    # The promotion job itself, its stage still queued, submits the next one: with its own
    # interpreter, never a program named in the study's files (anyone able to write them
    # could name any).
    record = json.loads(paths.search_record.read_text())
    paths.search_record.write_text(json.dumps({**record, "python": "/tmp/planted-python"}))
    step = subprocess.run([sys.executable, "-P", "-m", "hpcxfer.tune.promote", str(paths.dir)], capture_output=True,
                          text=True, env={**os.environ, **env, "HPCXFER_JOB_ID": f"pbs:{promotion['id']}"},
                          timeout=300, check=False)
    assert step.returncode == 0, step.stdout + step.stderr
    nxt = pbs_standin.jobs(env)[-1]
    assert nxt["id"] != promotion["id"], step.stdout + step.stderr
    script = Path(nxt["script"]).read_text()
    assert f"exec {sys.executable} -P -m hpcxfer.tune.promote {paths.dir}" in script.splitlines()
    assert "planted" not in script


@pytest.mark.slow
def test_gadi_promotion_job_is_one_cpu_of_the_normal_queue_after_the_packed_jobs(tmp_path, write_grid, cli):
    paths, _, jobs = _first_stage(tmp_path, write_grid, cli, "gadi",
                                    {"gadi": {"project": "ab12", "queue": "gpuvolta", "max_jobs": 2}})
    *stages, promotion = jobs
    script = Path(promotion["script"]).read_text()
    assert re.search(r"^#PBS -W depend='?afterany:" + re.escape(":".join(sorted(j["id"] for j in stages))) + "'?$",
                     script, re.MULTILINE), script
    for line in ("#PBS -q normal", "#PBS -l ncpus=1", "#PBS -l mem=2GB", "#PBS -l walltime=00:15:00", "#PBS -P ab12",
                 "#PBS -l wd", f"exec {sys.executable} -P -m hpcxfer.tune.promote {paths.dir}"):
        assert line in script.splitlines(), (line, script)
    assert "ngpus" not in script


def _decided_study(tmp_path, write_grid):
    """A study whose first rung is decided from metrics written by hand (no training)."""
    from hpcxfer import service
    from hpcxfer.fileio import append_jsonl
    from hpcxfer.tune import record
    from hpcxfer.tune.drive import Driver
    from hpcxfer.tune.settings import resolve

    grid = write_grid(SEARCH)
    paths = prepare_study(grid)
    req = service.prepare(str(grid), "local", None)
    search = resolve(req.grid, req.tasks)
    record.write(req, search)
    for i, t in enumerate(t for t in req.tasks if t.stage == "finetune"):
        append_jsonl(paths.task(t.task_id).metrics, {"epoch": 1, "val_acc": 0.1 * (i + 1), "val_loss": 1.0})
    return grid, paths, Driver(req, search, "tune")


def tree(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.name != ".submit.lock"}


def test_a_decision_is_written_before_it_is_applied_and_reapplied_by_the_next_step(tmp_path, write_grid, monkeypatch):
    from hpcxfer.tune import drive

    _, paths, driver = _decided_study(tmp_path, write_grid)
    real_apply = drive.apply

    def killed(*args):
        raise KeyboardInterrupt  # a kill between the decision and its effects

    monkeypatch.setattr(drive, "apply", killed)
    with pytest.raises(KeyboardInterrupt):
        driver.settle()
    rung0 = json.loads(paths.rung_decision(0).read_text())
    pruned = [t for s in rung0["sizes"]["10"] if not s["kept"] for t in s["tasks"]]
    assert len(pruned) == 2 and not any(paths.task(t).pruned.exists() for t in pruned)
    monkeypatch.setattr(drive, "apply", real_apply)
    step = driver.settle()
    assert json.loads(paths.rung_decision(0).read_text()) == rung0  # decided once, not again
    for t in pruned:
        assert json.loads(paths.task(t).pruned.read_text())["rung"] == 0 and not paths.task(t).rung.exists()
    kept = [t for s in rung0["sizes"]["10"] if s["kept"] for t in s["tasks"]]
    assert step.stage == 1 and sorted(t.task_id for t in step.behind) == sorted(kept)
    assert all(json.loads(paths.task(t).rung.read_text()) == {"stop_after": 2} for t in kept)
    # A second decider of the same rung (another promotion job) gets the first one's decision.
    again = drive.decide_rung(paths, driver.search, driver.by_size, {"10": sorted(driver.by_size[10])}, 0,
                              "promotion job")
    assert again == rung0 and again["decided_by"]["by"] == "tune"


def test_tune_refuses_settings_other_than_the_decisions_were_made_under(tmp_path, write_grid, cli):
    _, paths, driver = _decided_study(tmp_path, write_grid)
    driver.settle()
    before = tree(paths.dir)
    changed = write_grid(merge(SEARCH, {"search": {"eta": 3}}))
    out = cli("tune", changed, "--backend", "local")
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert str(changed) in line and "search" in line and "etas [2, 2] -> [3, 3]" in line, line
    assert tree(paths.dir) == before


def test_a_slurm_element_stopped_at_its_rung_is_not_a_preemption_to_requeue(tmp_path, write_grid):
    from hpcxfer.backends.slurm_element import stopped_at_rung
    from hpcxfer.fileio import append_jsonl, atomic_write_json

    paths = prepare_study(write_grid(SEARCH))
    task = next(p.name for p in paths.tasks_dir.iterdir() if p.name.startswith("ft-"))
    tp = paths.task(task)
    append_jsonl(tp.metrics, {"epoch": 1, "val_acc": 0.5})
    assert not stopped_at_rung(paths, task)  # no stop request: a preemption, requeued
    atomic_write_json(tp.rung, {"stop_after": 2})
    assert not stopped_at_rung(paths, task)  # stopped short of its rung: requeued
    atomic_write_json(tp.rung, {"stop_after": 1})
    assert stopped_at_rung(paths, task)


def test_a_rung_without_evidence_is_not_decided_and_a_users_tune_retries_the_failed(tmp_path, write_grid):
    """Every member failed (or its pre-training did): no metric at the rung, so a decision
    would rank by name. The step stops there, says why, and decides nothing; the user's
    next `tune` submits the failed members again (a promotion job's step does not)."""
    from hpcxfer import service
    from hpcxfer.fileio import atomic_write_json
    from hpcxfer.tune import record
    from hpcxfer.tune.drive import Driver
    from hpcxfer.tune.settings import resolve

    grid = write_grid(SEARCH)
    paths = prepare_study(grid)
    req = service.prepare(str(grid), "local", None)
    search = resolve(req.grid, req.tasks)
    record.write(req, search)
    members = [t for t in req.tasks if t.stage == "finetune"]
    for t in members:
        atomic_write_json(paths.task(t.task_id).failed, {"error": "RuntimeError: no source model", "exit": 1})
    step = Driver(req, search, "promotion job").settle()
    assert step.stuck and not step.ended and not paths.rung_decision(0).exists()
    assert "rung 0 (epoch 1) not decided: no member of 10 per class reached it" in step.note
    assert step.behind == []  # a promotion job does not retry what failed
    retry = Driver(req, search, "tune", retry_failed=True)
    assert sorted(t.task_id for t in retry.where(members, 1)[1]) == sorted(t.task_id for t in members)
