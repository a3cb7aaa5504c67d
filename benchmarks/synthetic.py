"""A synthetic study directory, written the way the worker writes one, without training.

For the collect benchmark, the tests and trying out `hpcxfer report`: real task ids, real
record formats, made-up but plausible numbers (accuracy rises with size, peaks at n = 5-6,
decays gently with more high-lr layers; splits add noise). Nothing here is a result, and
nothing of the package imports it (it is not shipped in the wheel).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from pathlib import Path

from hpcxfer.fileio import atomic_write_json, rewrite_jsonl
from hpcxfer.grid.protocols import SIZES
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths


def finetune_task(split: int, size, n: int, h: int = 8, d: int = 30, f: int = 0, *, dataset: str = "fashion-mnist",
                  epochs: int = 40, seed: int = 0) -> Task:
    pre = pretrain_task(split, dataset)
    return Task(stage="finetune", arch="alexnet-narrow", dataset=dataset, split=split, examples_per_class=size,
                transfer_layers=n, high_lr_layers=h, lr_high=0.01, lr_low=0.001, initial_decay_epochs=d,
                frozen_layers=f, lr_gamma=0.1, decay_every=30, epochs=epochs, batch_size=8, momentum=0.9,
                weight_decay=5e-4, seed=seed, depends_on=(pre.task_id,)).with_id()


def pretrain_task(split: int, dataset: str = "fashion-mnist") -> Task:
    return Task(stage="pretrain", arch="alexnet-narrow", dataset=dataset, split=split, examples_per_class="full",
                transfer_layers=0, high_lr_layers=8, lr_high=0.01, lr_low=0.01, initial_decay_epochs=30,
                frozen_layers=0, lr_gamma=0.1, decay_every=30, epochs=90, batch_size=256, momentum=0.9,
                weight_decay=5e-4, seed=0).with_id()


def plausible_acc(task: Task) -> float:
    """A made-up final accuracy with the paper's shape, plus split noise."""
    size = 1000 if task.examples_per_class == "full" else task.examples_per_class
    base = 0.2 + 0.08 * (len(str(size)) + size / 1000)
    shape = 0.03 * min(task.transfer_layers, 6) - 0.05 * (task.transfer_layers == 7) - 0.004 * task.high_lr_layers
    noise = random.Random(f"{task.split}-{task.seed}-{task.task_id}").gauss(0, 0.01)
    return max(0.0, min(1.0, base + shape - 0.001 * abs(task.initial_decay_epochs - 5) + noise))


def metrics_lines(task: Task, final_acc: float, records: int) -> list[str]:
    lines = []
    for e in range(1, records + 1):
        frac = e / records
        lines.append(json.dumps({
            "epoch": e, "train_loss": 2.0 * (1 - frac) + 0.1, "train_acc": min(1.0, final_acc * 1.5 * frac),
            "val_loss": 2.5 - 1.2 * frac, "val_acc": final_acc * frac ** 0.3,
            "lr_high": task.lr_high, "lr_low": task.lr_low, "images_per_s": 1200.0 + e, "wall_s": 1.5 * e,
        }, separators=(",", ":")))
    return lines


def write_study(root: Path, tasks: Iterable[Task], *, records: int = 10, name: str | None = None,
                finished=lambda task: True) -> StudyPaths:
    """A study directory at `root` (or root/name) holding `tasks`: tasks.jsonl, task.json,
    metrics.jsonl with `records` records, and result.json where `finished(task)`."""
    paths = StudyPaths(Path(root) / name if name else Path(root))
    tasks = list(tasks)
    paths.tasks_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.study_json, {"study": paths.name, "synthetic": True})
    rewrite_jsonl(paths.tasks_index, [t.to_dict() for t in tasks])
    for task in tasks:
        tp = paths.task(task.task_id)
        tp.dir.mkdir(exist_ok=True)
        tp.config.write_text(json.dumps(task.to_dict()))
        acc = plausible_acc(task)
        if records:
            tp.metrics.write_text("\n".join(metrics_lines(task, acc, records)) + "\n")
        if finished(task):
            tp.result.write_text(json.dumps({
                "task_id": task.task_id, "stage": task.stage, "val_acc": acc, "val_loss": 1.3, "train_loss": 0.1,
                "train_acc": min(1.0, acc * 1.5), "epochs": task.epochs, "restarts": 0, "wall_s": 150.0,
                "host": "synthetic", "device": "none", "versions": {}, "git_revision": None}))
    return paths


def big_grid(n_tasks: int = 10_000) -> list[Task]:
    """About `n_tasks` tasks: pre-training for 4 splits, then whole protocols (every size
    and split of each) over n, h, d until the count is reached."""
    tasks = [pretrain_task(s) for s in range(4)]
    for n, h, d in itertools.product(range(8), range(1, 9), (0, 1, 2, 3, 5, 10, 15, 20, 25, 30)):
        if len(tasks) + 28 > n_tasks:
            break
        tasks += [finetune_task(s, size, n, h, d) for size in SIZES for s in range(4)]
    return tasks
