"""A small study for the protocol-group tests: one pre-training and four fine-tuning
protocols of one (split, size) cell that differ in n, h, d and f, and their group.

The images are real Fashion-MNIST images written as a `folders` data set (60 training and
20 validation images a class): evaluating four members on Fashion-MNIST's 5,000 validation
images of a half would cost most of each test, and the group shares whatever data path it
is given. The members: a scratch one (n 0), a frozen one (n 3, f 2, h 1, d 1: a decay after
the first epoch), one decayed from the start (n 5, h 3, d 0, another lr_high) and the
common protocol (n 7, h 8).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from conftest import TINY_GRID, merge
from PIL import Image

from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.groups import Group, make_groups
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.study import study_paths, write_study

MEMBERS = [
    {"transfer_layers": 0, "high_lr_layers": 8, "initial_decay_epochs": 30},
    {"transfer_layers": 3, "frozen_layers": 2, "high_lr_layers": 1, "initial_decay_epochs": 1},
    {"transfer_layers": 5, "high_lr_layers": 3, "initial_decay_epochs": 0, "lr_high": 0.05},
    {"protocol": "common"},
]
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 20


def fashion_tree(root: Path) -> Path:
    """train/<class>/*.png and val/<class>/*.png from the first images of each
    Fashion-MNIST class (written once under `root`)."""
    tree = root / "fashion-tree"
    if tree.is_dir():
        return tree
    from hpcxfer.data import open_dataset

    ds = open_dataset("fashion-mnist", None, {})
    for part, images, per_class in (("train", ds.train, TRAIN_PER_CLASS), ("val", ds.val, VAL_PER_CLASS)):
        for c in range(ds.num_classes):
            folder = tree / part / f"class{c}"
            folder.mkdir(parents=True)
            idx = np.flatnonzero(images.labels == c)[:per_class]
            for i, img in zip(idx, images.load(idx)):
                Image.fromarray(img[0].numpy()).save(folder / f"{i:05d}.png")
    return tree


def make_study(root: Path, name: str, runtime: dict | None = None, epochs: int = 3, batch_size: int = 10,
               members: list[dict] | None = None, arch: str = "alexnet-narrow"
               ) -> tuple[StudyPaths, Task, list[Task], Group]:
    """The study (its group.json written as submit writes it): paths, the pre-training, the
    fine-tuning tasks in group order, the group."""
    tree = fashion_tree(root.parent)
    grid_file = root / f"{name}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    grid_file.write_text(yaml.safe_dump(merge(TINY_GRID, {
        "study": name, "root": str(root / "runs"), "arch": arch,
        "data": {"dataset": "folders", "path": str(tree), "image_size": 28, "crop": 28,
                 "index_cache": str(root / "index")},
        "pretrain": {"epochs": 2, "batch_size": 32, "examples_per_class": TRAIN_PER_CLASS, "decay_every": 1},
        "finetune": {"epochs": epochs, "batch_size": batch_size, "decay_every": 1},
        "experiments": members or MEMBERS,
        "runtime": {"eval_every": 1, "tensorboard": False, "threads": 1, **(runtime or {})}})))
    grid = load_grid(grid_file)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    pre = next(t for t in tasks if t.stage == "pretrain")
    (group,) = [u for u in make_groups(tasks, 0) if isinstance(u, Group)]
    gp = paths.group(group.group_id)
    gp.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(gp.config, group.to_dict())
    by_id = {t.task_id: t for t in tasks}
    return paths, pre, [by_id[m] for m in group.members], group


#: One thread each: the kill tests run several workers beside each other on a small machine.
WORKER_ENV = {"HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1"}


def start_group(study_dir, group_id: str, namespace: bool = True) -> subprocess.Popen:
    """`hpcxfer run-task STUDY GROUP` as a process; in its own PID namespace by default, where
    the worker is PID 1 and killing it ends everything in it."""
    cmd = [sys.executable, "-m", "hpcxfer", "run-task", str(study_dir), group_id]
    if namespace:
        cmd = ["unshare", "-fp", "--mount-proc", "--kill-child=SIGKILL", *cmd]
    return subprocess.Popen(cmd, env={**os.environ, **WORKER_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def worker_of(proc: subprocess.Popen, timeout: float = 60) -> int:
    """The pid (in this namespace) of the worker that `unshare` forked."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.005)
    raise TimeoutError("unshare started no worker")


def kill_at_random_moments(paths: StudyPaths, group: Group, members: list[Task], seed: int, tries: int,
                           timeout: float = 120) -> tuple[int, list[tuple[int, int]]]:
    """Start the group's worker up to `tries` times and SIGKILL it a random moment (drawn from
    `seed`) after it has written a checkpoint of its own: in a step of any member, in a
    checkpoint write, in an evaluation or a record append. Then run it to the end. Returns
    the kills and the (epoch, step) of the checkpoint each kill left."""
    from conftest import mtime, newest_checkpoint, wait_for

    rng, gp = random.Random(seed), paths.group(group.group_id)
    kills, resumed_from = 0, []

    def finished() -> bool:
        return all(paths.task(t.task_id).result.exists() for t in members)

    for _ in range(tries):
        proc = start_group(paths.dir, group.group_id)
        worker = worker_of(proc)
        seen = mtime(gp.checkpoint)
        if wait_for(lambda seen=seen: mtime(gp.checkpoint) not in (0, seen), proc, timeout=timeout):
            time.sleep(rng.uniform(0, 0.4))
        killed = proc.poll() is None
        if killed:
            os.kill(worker, signal.SIGKILL)
        proc.wait()
        if finished():
            break  # a kill after the results were written is no restart
        kills += killed
        state = newest_checkpoint(gp)  # a resumable checkpoint is there
        resumed_from.append((state["epoch"], state["step"]))
    while not finished():
        proc = start_group(paths.dir, group.group_id)
        assert proc.wait(timeout=5 * timeout) == 0, proc.stderr.read().decode()
    return kills, resumed_from
