"""Cells: fine-tuning results grouped by protocol axes, mean ± std over the rest.

By default a cell is one protocol at one size, and its replicates are the class splits and
seeds. `--by` names the axes that make a cell instead; every axis not named becomes a
replicate too (`--by examples_per_class,transfer_layers` averages over h, d, f, splits...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from hpcxfer.collect.moments import mean_std
from hpcxfer.collect.read import METRICS
from hpcxfer.errors import ConfigError
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, names_of
from hpcxfer.grid.task import Task

#: Fields over which results are averaged by default.
REPLICATE_FIELDS = ("split", "seed")
#: Every task field a cell can be grouped by (`--by`).
AXES = tuple(f for f in Task.__dataclass_fields__ if f not in ("task_id", "depends_on", "stage"))
#: The default cell: one protocol at one size, with every other setting it ran with.
DEFAULT_BY = tuple(a for a in AXES if a not in REPLICATE_FIELDS)
#: Two means closer than this are a tie (floating-point noise, not a difference).
TIE = 1e-9


def parse_by(text: str | None) -> tuple[str, ...]:
    """`--by a,b` -> the axes; an unknown axis is an error naming the valid ones."""
    if not text:
        return DEFAULT_BY
    by = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    for axis in by:
        if axis not in AXES:
            raise ConfigError(None, "--by", f"unknown axis {axis!r}", f"choose from {', '.join(AXES)}")
    if not by:
        raise ConfigError(None, "--by", "no axis given", f"choose from {', '.join(AXES)}")
    return by


def protocol_label(task: dict) -> str:
    """`common (n7 h8 d30 f0)` where the task is a named protocol, else `n3 h1 d30 f2`."""
    names = names_of({**task, "stage": "finetune"})
    fields = f"n{task['transfer_layers']} h{task['high_lr_layers']} d{task['initial_decay_epochs']} f{task['frozen_layers']}"
    return f"{'/'.join(names)} ({fields})" if names else fields


def size_key(size) -> float:
    return math.inf if size == "full" else float(size)


def value_key(value) -> tuple:
    """Orders a column of values: numbers by value (5 < 30), then words."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def sort_key(cell: dict, by: Sequence[str]) -> tuple:
    """Size first (10 < 25 < full), then the other axes; numbers before words."""
    order = (["examples_per_class"] if "examples_per_class" in by else []) + [a for a in by if a != "examples_per_class"]
    key = [(0, size_key(cell.get(a)), "") if a == "examples_per_class" else value_key(cell.get(a)) for a in order]
    return (*key, cell.get("protocol", ""))


def hashable(v):
    return tuple(v) if isinstance(v, list) else v


def summarize(rows: Iterable[dict], missing: Iterable[dict] = (), by: Sequence[str] = DEFAULT_BY) -> list[dict]:
    """One summary per cell of the fine-tuning tasks, sorted by size then the other axes:
    the cell's axes, `replicates` (replicates with a result), `missing` (tasks without one) and
    mean/std of each metric over the replicates. Rows and missing tasks are task dicts."""
    by = tuple(by)
    cells: dict[tuple, dict] = {}
    for row in rows:
        if row.get("stage") != "finetune":
            continue
        cell = cells.setdefault(tuple(hashable(row[a]) for a in by), {"task": row, "rows": [], "missing": 0})
        cell["rows"].append(row)
    for task in missing:
        if task.get("stage") == "finetune":
            key = tuple(hashable(task[a]) for a in by)
            cells.setdefault(key, {"task": task, "rows": [], "missing": 0})["missing"] += 1
    out = []
    for cell in cells.values():
        t = cell["task"]
        summary: dict = {}
        if all(f in by for f in PROTOCOL_FIELDS):
            summary["protocol"] = protocol_label(t)
        if "examples_per_class" in by:
            summary["examples_per_class"] = t["examples_per_class"]
        summary["replicates"], summary["missing"] = len(cell["rows"]), cell["missing"]
        summary.update({a: t[a] for a in by if a not in summary})
        for metric in METRICS:
            values = [r[metric] for r in cell["rows"] if isinstance(r.get(metric), (int, float))]
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean_std(values)
        out.append(summary)
    out.sort(key=lambda s: sort_key(s, by))
    return out


def cell_fields(by: Sequence[str] = DEFAULT_BY) -> list[str]:
    """The fields of every cell `summarize` makes, in its order (a CSV's header, even of
    a view with no cell)."""
    head = (["protocol"] if all(f in by for f in PROTOCOL_FIELDS) else []) + (
        ["examples_per_class"] if "examples_per_class" in by else [])
    head += ["replicates", "missing"]
    head += [a for a in by if a not in head]
    return head + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]


def varying(cells: Sequence[dict], axes: Iterable[str]) -> list[str]:
    """The axes among `axes` whose value is not the same in every cell."""
    return [a for a in axes if len({hashable(c.get(a)) for c in cells}) > 1]
