"""Job resources sized from the plan: every shipped grid renders job scripts a real cluster
would run to completion, on every scheduler backend; a grid that asks for too little is
warned about, one that cannot finish is refused; placeholders are refused at submit; Gadi
jobs stay on one node; the plan's tables say what they add up."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from hpcxfer import service
from hpcxfer.grid import cost
from hpcxfer.grid.expansion import expand_study
from hpcxfer.grid.load import load_grid
from hpcxfer.sites import GADI_QUEUES, Queue

JOBS = Path(__file__).resolve().parents[1] / "jobs"
SHIPPED = sorted(JOBS.glob("plested2019/*.yaml")) + [JOBS / "quickstart.yaml"]
SHIPPED = [p for p in SHIPPED if p.name != "base.yaml"]  # base.yaml alone has no epochs to fine-tune


def _minutes(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 60 + m + math.ceil(s / 60)


def _requests(backend: str, text: str) -> dict:
    """gpus, cpus, mem_gb and minutes one rendered job script asks for."""
    if backend == "slurm":
        d = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, re.M))
        return {"gpus": int(d.get("gpus-per-task", 0)), "cpus": int(d["cpus-per-task"]),
                "mem_gb": int(d["mem"].rstrip("M")) / 1024, "minutes": int(d["time"])}
    if backend == "pbs":
        select = re.search(r"^#PBS -l select=1:(\S+)", text, re.M).group(1)
        d = dict(kv.split("=") for kv in select.split(":"))
        wall = re.search(r"^#PBS -l walltime=(\S+)", text, re.M).group(1)
        return {"gpus": int(d.get("ngpus", 0)), "cpus": int(d["ncpus"]), "mem_gb": int(d["mem"].rstrip("mb")) / 1024,
                "minutes": _minutes(wall)}
    d = dict(re.findall(r"^#PBS -l (ncpus|ngpus|mem|walltime)=(\S+)", text, re.M))
    return {"gpus": int(d["ngpus"]), "cpus": int(d["ncpus"]), "mem_gb": int(d["mem"].rstrip("GB")),
            "minutes": _minutes(d["walltime"])}


@pytest.mark.parametrize("backend", ["slurm", "pbs", "gadi"])
@pytest.mark.parametrize("grid_file", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_grid_renders_jobs_that_finish(grid_file, backend, tmp_path):
    """Each stage's job asks for a GPU with the site's CPUs and memory per GPU, and a
    walltime that, with the resumes the grid allows, covers the stage's longest task (an
    array element) or its packed jobs' share of the work (Gadi), as the cost model prices it."""
    req = service.prepare(str(grid_file), backend, str(tmp_path))
    dry = service.dry_run(req)
    grid = req.grid
    scripts = {s: dry.submission.files[s] for s in dry.submission.scripts}
    assert scripts and not (tmp_path / grid.study).exists()  # a dry run writes nothing
    for path, text in scripts.items():
        assert _requests(backend, text)["gpus"] >= 1, path  # the cost model prices GPU time
    from hpcxfer.backends.resources import MARGIN, RESUME_S
    from hpcxfer.sites import CLUSTER

    if backend == "gadi":
        q = GADI_QUEUES[grid.gadi.queue]
        queue, cpus_per_gpu, mem_per_gpu, resumes = q, q.cpus_per_gpu, q.mem_gb_per_gpu, grid.gadi.resubmits
    else:
        queue = Queue(CLUSTER.device, CLUSTER.cpus_per_gpu, 0.0)
        cpus_per_gpu, mem_per_gpu = CLUSTER.cpus_per_gpu, CLUSTER.mem_gb_per_gpu
        resumes = grid.slurm.max_requeues if backend == "slurm" else grid.pbs.resubmits
    for path, text in scripts.items():
        stage = "pretrain" if "pretrain" in Path(path).name else "finetune"
        got = _requests(backend, text)
        assert got["gpus"] >= 1, (path, got)  # the cost model prices GPU time
        assert got["cpus"] == cpus_per_gpu * got["gpus"] and got["mem_gb"] == mem_per_gpu * got["gpus"], (path, got)
        workers = cost.stage_workers(grid, expand_study(grid).tasks, queue, got["gpus"])[stage]
        jobs = len([p for p in scripts if stage in Path(p).name])
        # what one job must get through, at least: its longest worker (an array element runs
        # one), and on Gadi its GPUs' share of the stage's work
        need = max(workers) if backend != "gadi" else max(max(workers), sum(workers) / (jobs * got["gpus"]))
        usable = (1 + resumes) * (got["minutes"] * 60 - RESUME_S) if need * MARGIN > got["minutes"] * 60 \
            else got["minutes"] * 60
        assert need * MARGIN <= usable, (path, got, need / 3600)
        if backend == "gadi":
            assert got["gpus"] <= GADI_QUEUES[grid.gadi.queue].gpus_per_node


def test_each_stage_gets_its_own_resources():
    """The paper grid: a pre-training job (one task of 8 h on a V100) asks for far less time
    than a fine-tuning one (a protocol group past a day), and Gadi packs fine-tuning on a node."""
    from hpcxfer.backends.resources import stage_plan

    grid = load_grid(JOBS / "plested2019" / "all.yaml")
    pre, fine = stage_plan(grid, "pretrain", "slurm"), stage_plan(grid, "finetune", "slurm")
    assert pre.resources.minutes == 630 and 8 < pre.job_s / 3600 < 8.5  # 8.3 h x 1.25 + 10 min, to 15 min
    assert fine.resources.minutes == 24 * 60 and fine.jobs == 2  # the site's longest, then one requeue
    assert pre.resources.gpus == fine.resources.gpus == 1 and pre.resources.cpus == 8
    gadi_pre, gadi_fine = stage_plan(grid, "pretrain", "gadi"), stage_plan(grid, "finetune", "gadi")
    assert (gadi_pre.resources.gpus, gadi_pre.resources.cpus, gadi_pre.resources.mem_gb) == (1, 12, 95)
    assert (gadi_fine.resources.gpus, gadi_fine.resources.cpus, gadi_fine.resources.mem_gb) == (4, 48, 380)
    assert gadi_fine.jobs == 1 and gadi_fine.resources.minutes <= 48 * 60


#: Slow enough (the narrow AlexNet at 2.5 training images a second) that the tiny grid's
#: pre-training is estimated at 4.2 minutes (5.3 with the margin), past a 4-minute walltime:
#: each resume loses 5 minutes, so a job gets at least 1 minute of work done, and 11 jobs finish it.
SLOW = {"cost": {"devices": {"v100": {"train": 0.01}}}, "resources": {"time": "4"}}


def test_a_walltime_shorter_than_a_task_warns_and_one_that_cannot_finish_is_refused(write_grid, cli, tmp_path):
    grid = write_grid({**SLOW, "slurm": {"max_requeues": 20}})
    out = cli("submit", grid, "--backend", "slurm", "--dry-run")
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("warning: slurm pretrain")]
    assert "resources.time" in line and "0:04:00" in line and "11 jobs" in line and "requeued by SLURM" in line
    plan = cli("plan", grid)
    assert plan.returncode == 0 and "warning: slurm pretrain" in plan.stdout
    refused = cli("submit", write_grid({**SLOW, "slurm": {"max_requeues": 1}}), "--backend", "slurm", "--dry-run")
    assert refused.returncode == 2 and refused.stdout == ""
    (err,) = refused.stderr.strip().splitlines()
    assert "resources.time" in err and "pretrain" in err and "slurm.max_requeues 1" in err
    pbs = cli("submit", write_grid({**SLOW}), "--backend", "pbs", "--dry-run")
    assert pbs.returncode == 2 and "pbs.resubmits 0" in pbs.stderr


def test_placeholders_are_refused_at_submit_and_noted_by_a_dry_run(write_grid, cli, tmp_path):
    grid = write_grid({"data": {"dataset": "fashion-mnist", "path": "/g/data/<project>/fmnist"}})
    out = cli("submit", grid)
    assert out.returncode == 2 and out.stdout == ""
    (err,) = out.stderr.strip().splitlines()
    assert "data.path" in err and "<project>" in err
    assert not (tmp_path / "runs").exists()
    dry = cli("submit", grid, "--dry-run", "--backend", "slurm")
    assert dry.returncode == 0 and "note: data.path '/g/data/<project>/fmnist': a placeholder" in dry.stdout


def test_gadi_gpus_per_job_stays_on_one_node(write_grid, cli):
    for queue, gpus, ok in (("gpuvolta", 4, True), ("gpuvolta", 5, False), ("dgxa100", 8, True),
                            ("gpuhopper", 5, False)):
        out = cli("plan", write_grid({"gadi": {"queue": queue, "gpus_per_job": gpus}}))
        assert (out.returncode == 0) is ok, (queue, gpus, out.stderr)
        if not ok:
            assert "gadi.gpus_per_job" in out.stderr and "one node" in out.stderr


def test_cost_rows_add_up_to_the_total_under_them():
    grid = load_grid(JOBS / "plested2019" / "all.yaml")
    rows = cost.price_study(grid)
    names = [n for n, _ in rows]
    assert names[-2:] == [cost.TOTAL_ALONE, cost.TOTAL_GROUPED]
    parts, alone = [c for _, c in rows[:-2]], rows[-2][1]
    assert sum(c.tasks for c in parts) == alone.tasks == 1180
    assert sum(c.images for c in parts) == pytest.approx(alone.images)
    for q in alone.gpu_hours:
        assert sum(c.gpu_hours[q] for c in parts) == pytest.approx(alone.gpu_hours[q])
        assert sum(c.su[q] for c in parts) == pytest.approx(alone.su[q])


def test_plan_table_shows_the_seed_and_no_protocol_on_pretraining(write_grid, cli):
    out = cli("plan", write_grid({"finetune": {"seed": [3, 7]}}))
    assert out.returncode == 0, out.stderr
    header = next(ln for ln in out.stdout.splitlines() if "task_id" in ln)
    cols = [c.strip() for c in header.strip("┃│ ").split("┃")]
    assert cols[:5] == ["task_id", "stage", "split", "seed", "per class"]
    rows = [[c.strip() for c in ln.strip("│ ").split("│")] for ln in out.stdout.splitlines()
            if ln.startswith("│ pt-") or ln.startswith("│ ft-")]
    pre = [r for r in rows if r[1] == "pretrain"]
    fine = [r for r in rows if r[1] == "finetune"]
    assert pre and all(r[5:9] == ["", "", "", ""] for r in pre)
    assert {r[3] for r in fine} == {"3", "7"} and all(r[5] != "" for r in fine)
