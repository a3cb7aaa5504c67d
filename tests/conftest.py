"""Shared fixtures: tiny grids on the real Fashion-MNIST, and the CLI as a real process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

#: A grid small enough to train in seconds on one core, yet a real study: real images,
#: real pre-training on the source half, real fine-tuning on the target half.
TINY_GRID = {
    "study": "tiny",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 2, "batch_size": 32, "examples_per_class": 60, "decay_every": 1},
    "finetune": {"split": [0], "examples_per_class": [10], "epochs": 3, "batch_size": 10},
    "experiments": [
        {"name": "named", "protocol": ["scratch", "common"]},
        {"name": "n", "transfer_layers": [3], "frozen_layers": [2], "high_lr_layers": 1},
    ],
    # Every task its own worker, as before protocol groups: tests of groups set group_max 0.
    "runtime": {"eval_every": 1, "group_max": 1},
    "local": {"max_parallel": 2},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.fixture
def write_grid(tmp_path):
    """write_grid(overrides=None, name=...) -> path of a grid file; overrides merge into
    TINY_GRID (a None value deletes the key) and root points into tmp_path."""

    def _write(overrides: dict | None = None, name: str = "grid.yaml", base: dict | None = None) -> Path:
        grid = merge(base if base is not None else TINY_GRID, {"root": str(tmp_path / "runs")})
        grid = merge(grid, overrides or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(grid, sort_keys=False))
        return path

    return _write


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user or a job script runs it."""
    return subprocess.run([sys.executable, "-m", "hpcxfer", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture
def cli():
    return run_cli


class StopAfter:
    """A stop flag that a signal sets after `steps` steps (as StopFlag, without the signal)."""

    def __init__(self, steps: int, signum: int = 10):  # SIGUSR1
        self.left, self.signum = steps, signum

    def __bool__(self) -> bool:  # asked once after every step
        self.left -= 1
        return self.left <= 0


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """True once cond() holds; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("the worker made no progress")


def mtime(path) -> int:
    """A file's modification time in ns; 0 while it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="session")
def cluster() -> int:
    """The test cluster of .ci/slurm-up.sh is up (started here if not) and SLURM's commands,
    here and in the jobs, reach it and no other SLURM (SLURM_CONF); returns its MaxArraySize."""
    folder = os.environ.get("HPCXFER_SLURM_DIR", "/var/lib/hpcxfer-slurm")
    os.environ["SLURM_CONF"] = os.path.join(folder, "slurm.conf")
    if subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        script = Path(__file__).resolve().parents[1] / ".ci" / "slurm-up.sh"
        up = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        if up.returncode != 0:
            pytest.fail(f".ci/slurm-up.sh failed:\n{up.stdout}\n{up.stderr}")
    from hpcxfer.backends.slurm import max_array_size

    return max_array_size()


def prepare_study(grid_path: Path, root: str | None = None):
    """The study of a grid written as a submit writes it (study.json, tasks.jsonl, every
    task.json), nothing submitted: what tests prepare before running tasks by hand. (A dry
    run writes nothing.) Returns its StudyPaths."""
    from hpcxfer.grid import expand, load_grid
    from hpcxfer.study import study_paths, write_study

    grid = load_grid(grid_path)
    paths = study_paths(grid, root)
    write_study(paths, grid, expand(grid))
    return paths


def newest_checkpoint(paths) -> dict:
    """The checkpoint a resume starts from, in the worker's order (checkpoint.load_latest):
    a kill between a save's two renames leaves the complete new one as checkpoint.pt.new."""
    import torch

    path = next(p for p in (paths.checkpoint, paths.checkpoint_new, paths.checkpoint_prev) if p.exists())
    return torch.load(path, weights_only=True)
