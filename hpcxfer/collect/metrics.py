"""Every metrics record of every fine-tuning task, merged into learning curves per cell.

Only views that need the per-epoch records read them (the final numbers are in
result.json). Each task's file is parsed once and added into running moments per
(cell, epoch) (count, mean and M2, as numpy arrays indexed by epoch: hpcxfer/collect/moments.py),
so memory grows with cells x epochs, never with the number of lines. Tasks are split across
processes, each returning its partial moments: parsing JSON is the cost, and it parallelises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from hpcxfer.collect.aggregate import DEFAULT_BY, PROTOCOL_FIELDS, protocol_label, sort_key
from hpcxfer.collect.moments import Moments
from hpcxfer.collect.read import METRICS, Skipped, StudyRecords, read_jsonl
from hpcxfer.layout import StudyPaths
from hpcxfer.procs import usable_cpus

#: What a learning curve averages at each epoch.
CURVE_METRICS = (*METRICS, "lr_high", "lr_low", "images_per_s")
_EPOCH = itemgetter("epoch")
#: Below this many tasks a process pool costs more than it saves.
PARALLEL_FROM = 500


def task_curve(records: list[dict], where, skipped: Skipped) -> dict[int, dict]:
    """epoch -> record, one per epoch: the later of two records for one epoch is kept
    (it is the resumed run's, which went on training from there)."""
    by_epoch: dict[int, dict] = {}
    for rec in records:
        epoch = rec.get("epoch")
        if type(epoch) is not int or epoch < 0:
            skipped.line("without an epoch (a non-negative integer)", where)
            continue
        if epoch in by_epoch:
            skipped.line("duplicate epoch (the later record kept)", where)
        if "lr" in rec and "lr_high" not in rec:
            rec["lr_high"] = rec["lr_low"] = rec["lr"]
            skipped.adapt("of an older format (one 'lr' for every layer group)", where)
        by_epoch[epoch] = rec
    return by_epoch


def _number(v) -> float:
    return float(v) if v.__class__ in (int, float) else math.nan


def _matrix(curve: dict[int, dict], metrics: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    epochs = np.fromiter(curve.keys(), dtype=np.int64, count=len(curve))
    return epochs, np.array([[_number(rec.get(m)) for m in metrics] for rec in curve.values()], dtype=float)


def curve_matrix(records: list[dict], metrics: Sequence[str], where, skipped: Skipped
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, values[epoch, metric]) of one task's records, one row per epoch.

    Fast path for the common case (every record whole, epochs strictly increasing, every
    metric a number); anything else goes through `task_curve`, which counts what it drops.
    """
    if not records:
        return None
    try:
        listed = list(map(_EPOCH, records))
        if set(map(type, listed)) == {int}:
            epochs = np.array(listed, dtype=np.int64)
            # null reads as a missing value (nan); a list or an object raises and takes the slow path
            values = np.array(list(map(itemgetter(*metrics), records)), dtype=float).reshape(len(records), -1)
            if epochs[0] >= 0 and (np.diff(epochs) > 0).all():
                return epochs, values
    except (KeyError, TypeError, ValueError):
        pass
    curve = task_curve(records, where, skipped)
    return _matrix(curve, metrics) if curve else None


def add_curve(sums: Moments, epochs: np.ndarray, values: np.ndarray) -> None:
    """One task's curve into its cell's moments; its epochs are unique and increasing."""
    first, last = int(epochs[0]), int(epochs[-1])
    sums.grow(last + 1)
    # the common case, epochs first..last with none left out, adds into a slice (no gather/scatter)
    at = slice(first, last + 1) if last - first + 1 == len(epochs) else epochs
    sums.add(values, at)


@dataclass
class Curve:
    """One cell's learning curve: per epoch reached, the replicates that reached it (n) and
    mean/std of each metric."""

    cell: dict
    metrics: tuple[str, ...]
    epochs: np.ndarray
    n: np.ndarray
    mean: np.ndarray  # (epochs, metrics); nan where no replicate has the metric
    std: np.ndarray

    def rows(self) -> Iterator[dict]:
        for i, epoch in enumerate(self.epochs.tolist()):
            row = {**self.cell, "epoch": epoch, "replicates": int(self.n[i])}
            for j, m in enumerate(self.metrics):
                mean, std = float(self.mean[i, j]), float(self.std[i, j])
                row[f"{m}_mean"] = None if math.isnan(mean) else mean
                row[f"{m}_std"] = None if math.isnan(std) else std
            yield row


def _key(task: dict, by: Sequence[str]) -> tuple:
    return tuple(tuple(task[a]) if isinstance(task[a], list) else task[a] for a in by)


def _partial(paths: StudyPaths, tasks: list[dict], by: Sequence[str], metrics: Sequence[str]
             ) -> tuple[dict[tuple, Moments], Skipped]:
    """Moments of a share of the tasks (what one process does)."""
    sums: dict[tuple, Moments] = {}
    skipped = Skipped()
    for task in tasks:
        path = paths.task(task["task_id"]).metrics
        matrix = curve_matrix(read_jsonl(path, skipped), metrics, path, skipped)
        if matrix is None:
            continue
        epochs, values = matrix
        key = _key(task, by)
        cell = sums.get(key)
        if cell is None:
            cell = sums[key] = Moments.empty((int(epochs.max()) + 1, len(metrics)))
        add_curve(cell, epochs, values)
    return sums, skipped


def default_jobs() -> int:
    return min(usable_cpus(), 16)


def merge_metrics(records: StudyRecords, by: Sequence[str] = DEFAULT_BY,
                  metrics: Sequence[str] = CURVE_METRICS, jobs: int | None = None) -> list[Curve]:
    """Every fine-tuning task's metrics records merged into one curve per cell, sorted like
    the cells; unfinished tasks contribute the epochs they reached. `jobs` processes parse
    (default: one per available core)."""
    by, metrics = tuple(by), tuple(metrics)
    tasks = [t for t in records.tasks if t["stage"] == "finetune"]
    jobs = default_jobs() if jobs is None else max(1, jobs)
    if jobs == 1 or len(tasks) < PARALLEL_FROM:
        parts = [_partial(records.paths, tasks, by, metrics)]
    else:
        shares = [tasks[i::jobs] for i in range(jobs)]
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_partial, [records.paths] * jobs, shares, [by] * jobs, [metrics] * jobs))
    sums: dict[tuple, Moments] = {}
    for part, skipped in parts:
        records.skipped.merge(skipped)
        for key, cell in part.items():
            if key in sums:
                sums[key].merge(cell)
            else:
                sums[key] = cell
    first = {}
    for t in tasks:
        first.setdefault(_key(t, by), t)
    curves = []
    for key, s in sums.items():
        t = first[key]
        cell = {"protocol": protocol_label(t)} if all(f in by for f in PROTOCOL_FIELDS) else {}
        cell.update({a: t[a] for a in by})
        reached = np.flatnonzero(s.count.max(axis=1) > 0)
        count = s.count[reached]
        mean = np.where(count > 0, s.mean[reached], np.nan)
        std = s.std()[reached]
        curves.append(Curve(cell, metrics, reached, count.max(axis=1).astype(int), mean, std))
    curves.sort(key=lambda c: sort_key(c.cell, by))
    return curves
