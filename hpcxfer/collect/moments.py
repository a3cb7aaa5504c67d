"""Mean and sample standard deviation: the one formula behind every `_std` that collect writes.

A set of values is summarised by its count, mean and M2 (the sum of squared deviations from
the mean), computed in two passes (`mean_std`), never from a sum of squares,
which loses the digits of a small spread around a large mean. Two summaries combine by Chan,
Golub and LeVeque's update (`Moments.merge`), so learning curves, which add one task at a
time and are split across processes (hpcxfer/collect/metrics.py), get what the cells'
two-pass formula gets (hpcxfer/collect/aggregate.py), up to rounding in the last digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation, in two passes (0 for one value; None for none).
    Plain Python: a cell has a few replicates, and numpy's call overhead would cost more."""
    if not values:
        return None, None
    m = math.fsum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Moments:
    """count, mean and M2 of every entry of an array (e.g. epochs x metrics); count 0 where
    nothing was added yet."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Moments:
        return cls(*(np.zeros(shape) for _ in range(3)))

    def grow(self, rows: int) -> None:
        """Room for `rows` rows (the epochs of a longer curve)."""
        if rows > len(self.count):
            pad = ((0, rows - len(self.count)), *((0, 0),) * (self.count.ndim - 1))
            self.count, self.mean, self.m2 = (np.pad(a, pad) for a in (self.count, self.mean, self.m2))

    def add(self, values: np.ndarray, at: slice | np.ndarray) -> None:
        """One observation per entry of the rows `at` (NaN: none there): Welford's update,
        which is `merge` with a count of one and no spread, in fewer steps (the curves add
        every task this way)."""
        count, mean = self.count[at], self.mean[at]
        missing = np.isnan(values)
        if missing.any():
            present = ~missing
            n = count + present
            delta = np.where(present, values - mean, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = mean + np.where(present, delta / n, 0.0)
            self.m2[at] += delta * np.where(present, values - mean, 0.0)
        else:
            n = count + 1.0
            delta = values - mean
            mean = mean + delta / n
            self.m2[at] += delta * (values - mean)
        self.mean[at] = mean
        self.count[at] = n

    def merge(self, other: Moments) -> None:
        """Add `other`'s observations into the first rows (its own number of rows)."""
        self.grow(len(other.count))
        at = slice(0, len(other.count))
        n_a, mean_a = self.count[at], self.mean[at]
        n = n_a + other.count
        delta = other.mean - mean_a
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, other.count / n, 0.0)
        self.mean[at] = mean_a + delta * share
        self.m2[at] = self.m2[at] + other.m2 + delta * delta * n_a * share
        self.count[at] = n

    def std(self) -> np.ndarray:
        """Sample standard deviation: 0 for one observation, NaN for none."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, np.sqrt(np.maximum(self.m2, 0.0) / (self.count - 1)),
                            np.where(self.count == 1, 0.0, np.nan))
