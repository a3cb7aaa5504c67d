"""One standard deviation formula: the cells' two-pass one, and the curves' streaming form of it."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from collect_study import ft, write

from hpcxfer.collect import read_study
from hpcxfer.collect.aggregate import parse_by, summarize
from hpcxfer.collect.metrics import merge_metrics
from hpcxfer.collect.moments import Moments, mean_std

#: A small spread around a large mean: a sum of squares (about 3e16, spaced 4 apart) has
#: no digit of the variance (0.01) left.
HARD = [1e8 + 0.1, 1e8 + 0.2, 1e8 + 0.3]


def one_pass_std(values: list[float]) -> float:
    """The formula the curves used before: from the sum and the sum of squares."""
    n, total, squares = len(values), sum(values), sum(v * v for v in values)
    return math.sqrt(max(0.0, (squares - total * (total / n)) / (n - 1)))


def streamed(values: list[float], parts: int = 1) -> Moments:
    """`values` added one at a time into `parts` partial moments, then merged (as the curves'
    worker processes do)."""
    partials = [Moments.empty((1, 1)) for _ in range(parts)]
    for i, v in enumerate(values):
        partials[i % parts].add(np.array([[v]]), slice(0, 1))
    total = Moments.empty((1, 1))
    for p in partials:
        total.merge(p)
    return total


def test_streamed_moments_give_the_two_pass_mean_and_std():
    assert abs(one_pass_std(HARD) - 0.1) > 0.05  # what the old curves formula got wrong
    rng = random.Random(3)
    for values in (HARD, [0.5, 0.6, 0.85], [rng.gauss(1e6, 1e-3) for _ in range(50)], [0.25]):
        mean, std = mean_std(values)
        for parts in (1, 3):
            m = streamed(values, parts)
            assert float(m.mean[0, 0]) == pytest.approx(mean, rel=1e-15)
            assert float(m.std()[0, 0]) == pytest.approx(std, rel=1e-7, abs=1e-15)  # HARD: 1e-8 ulps
    assert math.isnan(Moments.empty((1, 1)).std()[0, 0])  # nothing added: no std


def test_a_missing_value_adds_nothing_to_its_entry():
    m = Moments.empty((1, 2))
    m.add(np.array([[1.0, math.nan]]), slice(0, 1))
    m.add(np.array([[3.0, 5.0]]), slice(0, 1))
    m.add(np.array([[math.nan, 7.0]]), np.array([0]))  # rows by index, as a curve with a gap
    assert m.count.tolist() == [[2.0, 2.0]] and m.mean.tolist() == [[2.0, 6.0]]
    assert m.std().tolist() == [[math.sqrt(2), math.sqrt(2)]]


def test_curves_and_cells_agree_on_a_small_spread_around_a_large_mean(tmp_path):
    tasks = [ft(s, 10, 7) for s in range(3)]
    paths = write(tmp_path / "s", {t: {"val_acc": 0.5, "val_loss": loss, "train_loss": 0.5, "train_acc": 0.9}
                                   for t, loss in zip(tasks, HARD)})
    for t, loss in zip(tasks, HARD):
        paths.task(t.task_id).metrics.write_text(json.dumps({"epoch": 1, "val_acc": 0.5, "val_loss": loss}) + "\n")
    rec = read_study(paths)
    (cell,) = summarize(rec.rows, rec.missing, parse_by(None))
    (curve,) = merge_metrics(rec, jobs=1)
    (row,) = curve.rows()
    assert cell["val_loss_std"] == pytest.approx(0.1, rel=1e-6)
    assert row["val_loss_std"] == pytest.approx(cell["val_loss_std"], rel=1e-6)
    assert row["val_loss_mean"] == pytest.approx(cell["val_loss_mean"], rel=1e-15)
