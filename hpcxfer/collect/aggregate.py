"""Mean and standard deviation over splits (and seeds) for each protocol and size."""

from __future__ import annotations

import math
from collections.abc import Iterable

from hpcxfer.grid.protocols import names_of
from hpcxfer.grid.task import Task

#: Fields over which results are averaged; every other task field tells protocols apart.
REPLICATE_FIELDS = ("split", "seed")
#: Fields that identify a cell but are not part of "the protocol" shown to a reader.
NOT_PROTOCOL = ("task_id", "depends_on", "stage", "arch", "dataset", "examples_per_class")
METRICS = ("val_acc", "val_loss", "train_loss", "train_acc")


def protocol_label(task: dict) -> str:
    """`common`, `scratch`, `optimal` where the task is one, else its n/h/d/f."""
    names = names_of(task)
    fields = f"n{task['transfer_layers']} h{task['high_lr_layers']} d{task['initial_decay_epochs']} f{task['frozen_layers']}"
    return f"{'/'.join(names)} ({fields})" if names else fields


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _size_key(size) -> float:
    return math.inf if size == "full" else float(size)


def cell_key(task: dict) -> tuple:
    skip = set(REPLICATE_FIELDS) | {"task_id", "depends_on"}
    return tuple(sorted((k, str(task[k])) for k in Task.__dataclass_fields__ if k not in skip))


def summarize(rows: Iterable[dict], missing: Iterable[Task] = ()) -> list[dict]:
    """One summary per (protocol, size) cell of the fine-tuning tasks, sorted by size then
    label: mean/std of each metric over replicates, how many finished, how many missing."""
    cells: dict[tuple, dict] = {}
    for row in rows:
        if row.get("stage") != "finetune":
            continue
        cell = cells.setdefault(cell_key(row), {"task": row, "rows": [], "missing": 0})
        cell["rows"].append(row)
    for task in missing:
        d = task.to_dict()
        if d["stage"] == "finetune":
            cells.setdefault(cell_key(d), {"task": d, "rows": [], "missing": 0})["missing"] += 1
    out = []
    for cell in cells.values():
        t = cell["task"]
        summary = {"protocol": protocol_label(t), "examples_per_class": t["examples_per_class"],
                   "n": len(cell["rows"]), "missing": cell["missing"],
                   **{k: t[k] for k in Task.__dataclass_fields__ if k not in NOT_PROTOCOL + REPLICATE_FIELDS}}
        for metric in METRICS:
            values = [r[metric] for r in cell["rows"] if isinstance(r.get(metric), (int, float))]
            m, s = mean_std(values) if values else (None, None)
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = m, s
        out.append(summary)
    out.sort(key=lambda s: (_size_key(s["examples_per_class"]), s["protocol"]))
    return out
