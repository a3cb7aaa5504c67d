"""Exact resume of a real worker process: SIGKILL at random moments, and each stop signal.

Every run is `python -m hpcxfer run-task` in its own process with one torch thread (CPU
results are then bit-for-bit reproducible). The task is a small real pre-training on
Fashion-MNIST: 300 images, 19 steps an epoch, 3 epochs, evaluated after each.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import TINY_GRID, merge, mtime, newest_checkpoint, wait_for

from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.task import Task
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker import checkpoint

pytestmark = pytest.mark.slow  # a dozen worker processes: about a minute on two free cores

EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")
ENV = {"HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _study(root, name: str, runtime: dict):
    """A study of one pre-training task (and the fine-tuning that needs it) under root."""
    grid_file = root / f"{name}.yaml"
    grid_file.write_text(yaml.safe_dump(merge(TINY_GRID, {
        "study": name, "root": str(root / "runs"),
        "pretrain": {"epochs": 3, "batch_size": 16, "examples_per_class": 60, "decay_every": 2},
        "experiments": [{"protocol": ["common"]}],
        "runtime": {"eval_every": 1, "tensorboard": False, **runtime}})))
    grid = load_grid(grid_file)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    return paths, paths.task(tasks[0].task_id)


def _start(study_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcxfer", "run-task", str(study_dir), "0"],
                            env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, started at once so that it runs beside the test's own runs."""
    paths, tp = _study(tmp_path_factory.mktemp("reference"), "ref", {})
    proc = _start(paths.dir)

    def result():
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        return read_json(tp.result), list(iter_jsonl(tp.metrics)), torch.load(tp.weights, weights_only=True)

    return result


def _assert_identical(tp, reference, run: str = "") -> dict:
    """`run` (e.g. the kill seed) goes into every assertion's message."""
    ref_result, ref_metrics, ref_weights = reference()
    result = read_json(tp.result)
    for key in EXACT:
        assert result[key] == ref_result[key], f"{key} {run}"  # identical, not approximately equal
    metrics = list(iter_jsonl(tp.metrics))
    assert [r["epoch"] for r in metrics] == [1, 2, 3], run
    for mine, ref in zip(metrics, ref_metrics):
        assert {k: mine[k] for k in EXACT} == {k: ref[k] for k in EXACT}, run
    weights = torch.load(tp.weights, weights_only=True)
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights), run
    assert not tp.checkpoint.exists() and not tp.checkpoint_prev.exists(), run  # removed when done
    return result


def test_sigkill_at_random_moments_changes_nothing(tmp_path, reference):
    # checkpoint_minutes 0.0005 (30 ms): a checkpoint every step or two
    paths, tp = _study(tmp_path, "killed", {"checkpoint_minutes": 0.0005})
    seed = int(os.environ.get("HPCXFER_KILL_SEED") or time.time_ns())
    print(f"kill seed {seed} (replay: HPCXFER_KILL_SEED={seed})")  # shown with a failure's output
    rng = random.Random(seed)
    kills, resumed_from = 0, []
    for _ in range(4):
        proc = _start(paths.dir)
        seen = mtime(tp.checkpoint)
        # kill a random moment after this run has written a checkpoint of its own: in a
        # step, in a checkpoint write, in an evaluation or in a metrics append
        if wait_for(lambda: mtime(tp.checkpoint) not in (0, seen), proc):
            time.sleep(rng.uniform(0, 0.4))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        if tp.result.exists():
            break
        state = newest_checkpoint(tp)
        resumed_from.append((state["epoch"], state["step"]))
    while not tp.result.exists():
        proc = _start(paths.dir)
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert kills >= 3, f"the task finished before it could be killed three times (seed {seed})"
    result = _assert_identical(tp, reference, f"(kill seed {seed}; replay: HPCXFER_KILL_SEED={seed})")
    assert result["restarts"] == kills, f"seed {seed}"
    print(f"killed {kills} times; resumed from (epoch, step) {resumed_from}")


@pytest.mark.parametrize("signals", [(signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)])
def test_each_stop_signal_checkpoints_and_exits_75(tmp_path, reference, signals):
    paths, tp = _study(tmp_path, "signalled", {"checkpoint_minutes": 60})
    for n, sig in enumerate(signals):
        proc = _start(paths.dir)
        # signal once this run has taken its first step (a checkpoint-free hour ahead)
        assert wait_for(lambda: tp.log.exists() and tp.log.read_text().count("first step") > n, proc)
        time.sleep(0.05 * n)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 75, f"{sig.name}: {proc.stderr.read().decode()}"
        state = torch.load(tp.checkpoint, weights_only=True)
        assert state["epoch"] * 19 + state["step"] > 0
        assert f"stopped by {sig.name}" in tp.log.read_text()
        assert not tp.running.exists() and not tp.result.exists()
    proc = _start(paths.dir)
    assert proc.wait(timeout=300) == 0
    assert _assert_identical(tp, reference)["restarts"] == len(signals)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    paths, tp = _study(tmp_path, "refuse", {})
    other = {**read_json(tp.config), "seed": 7}  # another task's identity
    checkpoint.save(tp, {"task": Task.from_dict(other).identity(), "model": {}})
    proc = _start(paths.dir)
    assert proc.wait(timeout=120) == 2
    assert "different task config" in read_json(tp.failed)["error"]
    assert not tp.metrics.exists() or not list(iter_jsonl(tp.metrics))
    assert torch.load(tp.checkpoint, weights_only=True)["task"]["seed"] == 7  # left as it was
