"""Exact resume on the streamed path of a generated ImageNet tree: the worker, with its
DataLoader worker processes and the decode cache it is building or reading, is killed
with SIGKILL in mid-epoch, stopped with SIGTERM, and resumed; it must finish with the
result of an uninterrupted run that never had a cache, bit for bit.

Every killed worker runs in its own PID namespace (`unshare -fp --mount-proc
--kill-child=SIGKILL`): the SIGKILL goes to `unshare`, the kernel then kills the worker
(the namespace's init) and with it every process of the namespace, its loader workers
included. Nothing outside the namespace can be hit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.make_imagenet_tree import make_tree
from conftest import newest_checkpoint, wait_for
from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker import decode_cache

pytestmark = pytest.mark.slow  # seven worker processes: about a minute on two cores

EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")
UNSHARE = ["unshare", "-fp", "--mount-proc", "--kill-child=SIGKILL"]


def _unshare_works() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not _unshare_works():
        pytest.skip("needs unshare -fp --mount-proc (root or user namespaces)")
    base = tmp_path_factory.mktemp("imagenet-resume")
    # 4 classes x 24 images: the pre-training streams 48 images, 12 steps of 4 an epoch, 4 epochs
    tree = make_tree(base / "tree", classes=4, train_per_class=24, val_per_class=3)
    node = base / "node"
    node.mkdir()
    env = {**os.environ, "HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(node),
           "HPCXFER_CACHE": str(base / "cache")}
    for var in ("PBS_JOBFS", "SLURM_TMPDIR"):
        env.pop(var, None)

    def study(name: str, **runtime):
        grid_file = base / f"{name}.yaml"
        grid_file.write_text(yaml.safe_dump({
            "study": name, "root": str(base / "runs"), "data": {**tree.data, "image_size": 32, "crop": 32},
            "pretrain": {"epochs": 10, "batch_size": 4, "examples_per_class": "full", "decay_every": 4},
            "finetune": {"split": [0], "examples_per_class": [4], "epochs": 1, "batch_size": 4},
            "experiments": [{"protocol": ["common"]}],
            "runtime": {"eval_every": 1, "tensorboard": False, "data_memory_gb": 0, "loader_workers": 2,
                        **runtime}}))
        grid = load_grid(grid_file)
        tasks = expand(grid)
        paths = study_paths(grid)
        write_study(paths, grid, tasks)
        return paths, paths.task(tasks[0].task_id)

    # the uninterrupted run, without a cache, started at once beside the test's own runs
    ref_paths, ref_tp = study("reference", decode_cache="off")
    ref = subprocess.Popen([sys.executable, "-m", "hpcxfer", "run-task", str(ref_paths.dir), "0"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def reference():
        assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()
        return (read_json(ref_tp.result), list(iter_jsonl(ref_tp.metrics)),
                torch.load(ref_tp.weights, weights_only=True))

    return study, env, node / decode_cache.SUBFOLDER, reference


def _start(study_dir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([*UNSHARE, sys.executable, "-m", "hpcxfer", "run-task", str(study_dir), "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _worker_pid(proc: subprocess.Popen) -> int:
    """The worker: the one child of `unshare` (its pid as this namespace sees it)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise TimeoutError("unshare started no worker")


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _processes_of(study_dir: Path) -> list[int]:
    """Processes whose command line names the study: the worker and its loader workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(study_dir).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_sigkill_mid_epoch_with_loader_workers_and_cache_resumes_exactly(setup):
    study, env, cached, reference = setup
    paths, tp = study("killed", checkpoint_minutes=0.0005)  # a checkpoint every few steps
    seed = int(os.environ.get("HPCXFER_KILL_SEED") or time.time_ns())
    print(f"kill seed {seed} (replay: HPCXFER_KILL_SEED={seed})")  # shown with a failure's output
    rng = random.Random(seed)
    stops, kills, termed, resumed_from, saw_partial = 0, 0, False, [], False
    # the first kill lands at once (epoch 1, the cache half built); the second at a random
    # moment (a step, a checkpoint write, an evaluation, a cache rename); then a stop
    # request; then a kill once an epoch is done (the train cache read from then on)
    for action in ("kill at once", "kill at random", "SIGTERM", "kill after an epoch", "kill at random"):
        proc = _start(paths.dir, env)
        seen = _mtime(tp.checkpoint)
        fresh = lambda: _mtime(tp.checkpoint) not in (0, seen)  # noqa: E731 - a checkpoint of this run
        if action == "SIGTERM":
            # the worker checkpoints at its next step, exits 75 and removes the cache
            # files it built or adopted
            before = _files(cached)
            if wait_for(lambda: tp.log.read_text().count("first step") > stops, proc):
                os.kill(_worker_pid(proc), signal.SIGTERM)
            status = proc.wait(timeout=120)
            if status == 75:
                stops, termed = stops + 1, True
                assert _files(cached) <= before
            else:  # it finished first
                assert status == 0, proc.stderr.read().decode()
        else:
            if action == "kill after an epoch":
                if wait_for(lambda: tp.metrics.exists() and len(list(iter_jsonl(tp.metrics))) >= 1 and fresh(),
                             proc):
                    seen = _mtime(tp.checkpoint)
                    wait_for(fresh, proc)
            elif wait_for(fresh, proc):
                time.sleep(0 if action == "kill at once" else rng.uniform(0, 0.6))
            saw_partial |= any(name.endswith(".partial") for name in _files(cached))
            killed = proc.poll() is None
            if killed:
                proc.kill()  # SIGKILL to unshare: the kernel kills the worker's whole namespace
            proc.wait()
            end = time.monotonic() + 10
            while _processes_of(paths.dir) and time.monotonic() < end:
                time.sleep(0.05)
            assert not _processes_of(paths.dir), "a loader worker outlived its worker"
            if killed and not tp.result.exists():  # a kill after the result is no restart
                stops, kills = stops + 1, kills + 1
        if tp.result.exists():
            break
        state = newest_checkpoint(tp)
        resumed_from.append((state["epoch"], state["step"]))
    assert kills >= 3, f"the task finished before it could be killed three times (seed {seed})"
    assert resumed_from[0][0] == 0 and resumed_from[0][1] > 0 and saw_partial  # killed while building
    assert any(epoch >= 1 for epoch, _ in resumed_from)  # and while reading
    while not tp.result.exists():
        proc = _start(paths.dir, env)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()

    ref_result, ref_metrics, ref_weights = reference()
    result = read_json(tp.result)
    assert {k: result[k] for k in EXACT} == {k: ref_result[k] for k in EXACT}
    assert result["restarts"] == stops and result["data_path"] == "stream"
    assert [{k: r[k] for k in EXACT} for r in iter_jsonl(tp.metrics)] == [
        {k: r[k] for k in EXACT} for r in ref_metrics]
    weights = torch.load(tp.weights, weights_only=True)
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    # every cache a killed worker left was adopted or rebuilt, and removed at the end
    assert _files(cached) == set()
    log = tp.log.read_text()
    assert "into" in log and ("read it" in log or "reading" in log)
    print(f"killed {kills} times, SIGTERM {'landed' if termed else 'came after the end'}; "
          f"resumed from (epoch, step) {resumed_from}")
