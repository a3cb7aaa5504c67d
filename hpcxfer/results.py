"""A task's result.json, validated where it is read: a record that parses is not yet a result.

A task is done only when its result.json is a JSON object that names the task itself and
holds numbers that can be results: accuracies finite and within 0..1, losses not negative.
A loss may be NaN or +Infinity (the worker writes what a diverged run measured: rerunning
it would diverge again), an accuracy never (it is a count over a count). Anything else is
a damaged result: `status` reports the task as failed with the reason, `collect` counts it
among the skipped tasks, and the next `submit` trains the task again.

What a result says about its run (versions, host, device, `threads`, `deterministic`:
hpcxfer/worker/env.py) is reported, not validated: a result written before a field existed
still loads, and the report's provenance shows it as not recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hpcxfer.fileio import loads, read_regular

#: Metrics a result carries and collect aggregates.
METRICS = ("val_acc", "val_loss", "train_loss", "train_acc")
ACCURACIES = ("val_acc", "train_acc")
LOSSES = ("val_loss", "train_loss")
#: How `load` begins its reason for a result.json it could not read at all.
UNREADABLE = "unreadable"
#: A result.json is a few hundred bytes; a larger file is not one.
MAX_BYTES = 1 << 20


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)  # bool is an int to isinstance, never a metric


def metric_problem(name: str, v: Any) -> str | None:
    """Why `v` cannot be the value of metric `name`, or None."""
    if not _is_number(v):
        return f"{name} is {json.dumps(v)[:40]}, not a number"
    if name in ACCURACIES and not (math.isfinite(v) and 0 <= v <= 1):
        hint = " (a percentage?)" if math.isfinite(v) and 1 < v <= 100 else ""
        return f"{name} {v!r} is not an accuracy within 0..1{hint}"
    if name in LOSSES and not (math.isnan(v) or v >= 0):
        return f"{name} {v!r} is negative"
    return None


def problem(result: Any, task_id: str) -> str | None:
    """Why `result` is not a usable result of task `task_id`, or None.

    Metrics other than val_acc may be missing (collect fills them from metrics.jsonl, as
    the oldest records need); those present must be valid.
    """
    if not isinstance(result, dict):
        return f"not a JSON object ({type(result).__name__})"
    own = result.get("task_id")
    if own != task_id:
        return "without its task_id" if own is None else f"the result of another task ({json.dumps(own)[:60]})"
    if "val_acc" not in result:
        return "without val_acc"
    for name in METRICS:
        if name in result:
            why = metric_problem(name, result[name])
            if why:
                return why
    for name in ("epochs", "restarts"):
        v = result.get(name)
        if v is not None and (type(v) is not int or v < 0):
            return f"{name} is {json.dumps(v)[:40]}, not a count"
    wall = result.get("wall_s")
    if wall is not None and not (_is_number(wall) and math.isfinite(wall) and wall >= 0):
        return f"wall_s is {json.dumps(wall)[:40]}, not a duration"
    return None


def load(path: Path, task_id: str) -> tuple[dict | None, str | None]:
    """(result, None) for a valid result.json; (None, why) for a damaged one; (None, None)
    when there is none."""
    try:
        data = read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{UNREADABLE} ({e.strerror or type(e).__name__})"
    if len(data) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES} bytes"
    try:
        result = loads(data)  # NaN and Infinity too (a diverged loss)
    except ValueError:
        return None, "empty" if not data.strip() else "not JSON"
    why = problem(result, task_id)
    return (None, why) if why else (result, None)


def is_done(path: Path, task_id: str) -> bool:
    """Whether `path` holds a valid result of the task."""
    return load(path, task_id)[0] is not None
