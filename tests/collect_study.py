"""Small hand-made study directories for the collect tests: real task ids and record formats,
results chosen by the test so that every expected number can be worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import synthetic
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths

ft = synthetic.finetune_task


def write(root: Path, results: dict[Task, dict | float | None], records: int = 3) -> StudyPaths:
    """A study holding `results`' tasks (plus their pre-training): a float is the val_acc of a
    finished task (losses 1.0 / 0.5, train_acc 0.9), a dict is its whole result, None is a task
    that has metrics but no result."""
    tasks = list(results)
    pre = {synthetic.pretrain_task(t.split, t.dataset) for t in tasks}
    paths = synthetic.write_study(root, sorted(pre, key=lambda t: t.split) + tasks, records=records,
                                  finished=lambda t: t.stage == "pretrain")
    for task, value in results.items():
        if value is None:
            continue
        result = value if isinstance(value, dict) else {"val_acc": value, "val_loss": 1.0, "train_loss": 0.5,
                                                        "train_acc": 0.9}
        paths.task(task.task_id).result.write_text(json.dumps({"task_id": task.task_id, **result}))
    return paths


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]
