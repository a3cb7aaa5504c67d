"""The decision at a rung: which candidates of one target size train on.

A pure function of the members' metrics at the rung. Evidence is pooled over every split
and seed: each candidate is compared with the leader (the best mean) pair by pair, one
difference per (split, seed) both hold, with the 95 % t interval of the mean difference
(hpcxfer/collect/paired.py `paired_stats`). The ranking:

1. candidates not behind the leader (the interval includes 0 or lies on the better side,
   or fewer than two pairs to tell) before those significantly behind it;
2. within each, by the mean paired difference, better first; then by name.

The best `keep = max(ceil(k / eta), min_survivors)` go on. Why this order: a candidate
consistently behind the leader is known to be worse, while one whose interval includes 0
may still be the best (with few pairs, an erratic protocol's mean says little); pruning
what the evidence says is worse first is what keeps the grid's best alive. The interval
orders the pruning but does not widen it: with a few pairs nearly every candidate is tied
at an early rung, and keeping all of them would make the search cost what the grid
costs. The count is fixed, so a search's price is known before it starts (settings.py
`images_share`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from hpcxfer.collect.aggregate import TIE
from hpcxfer.collect.paired import paired_stats


@dataclass(frozen=True)
class Standing:
    """One candidate at a rung. Differences are candidate minus leader, in the metric's units."""

    candidate: str
    rank: int
    mean: float | None
    pairs: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    behind: bool  # significantly behind the leader: the whole interval on the worse side
    kept: bool

    def to_dict(self) -> dict:
        """The standing as a JSON object (the rung's decision file)."""
        return dict(self.__dict__)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decide(metrics: Mapping[str, Mapping[Hashable, float]], keep: int, higher_is_better: bool = True) -> list[Standing]:
    """Rank the candidates of one size and mark the best `keep` as kept.

    metrics: candidate -> {(split, seed): the metric at the rung}; a member without a finite
    value (a failed task) gives no evidence. A candidate with no evidence ranks last.
    """
    sign = 1.0 if higher_is_better else -1.0
    values = {c: {m: float(v) for m, v in ms.items() if _finite(v)} for c, ms in metrics.items()}
    means = {c: sum(vs.values()) / len(vs) for c, vs in values.items() if vs}
    leader = min(means, key=lambda c: (-sign * means[c], c)) if means else None
    rows = []
    for c in sorted(values):
        common = sorted(values[c].keys() & values[leader].keys(), key=repr) if leader is not None else []
        stats = paired_stats([values[c][m] - values[leader][m] for m in common])
        lo, hi = stats["ci_low"], stats["ci_high"]
        best_end = None if lo is None else max(sign * lo, sign * hi)  # the interval's better end, oriented
        behind = not common or (best_end is not None and best_end < -TIE)
        rows.append((c, stats, behind))

    def order(row):
        c, stats, behind = row
        diff = stats["mean_diff"]
        return (diff is None, behind, -sign * diff if diff is not None else 0.0, c)

    rows.sort(key=order)
    return [Standing(c, i + 1, means.get(c), s["pairs"], s["mean_diff"], s["ci_low"], s["ci_high"], behind, i < keep)
            for i, (c, s, behind) in enumerate(rows)]
