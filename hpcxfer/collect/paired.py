"""Paired differences: each protocol against a reference protocol, run by run.

The spread of a protocol's accuracy across class splits is often larger than any
difference between protocols, yet within one split (and seed) two protocols saw the same
images and are directly comparable. So a protocol is compared with the reference on the
runs both finished with the same replicate key (by default `split` and `seed`): one
paired difference per key, protocol minus reference. Over the n pairs:

- `mean_diff`: the mean difference (a fraction, as accuracies are stored);
- `ci_low`, `ci_high`: the 95 % interval of that mean, Student's t over the pairs,
  mean ± t(0.975, n - 1) x sd / sqrt(n); undefined (None) below two pairs;
- `wins` / `losses` / `ties`: pairs where the protocol is above / below / level with the
  reference (within `TIE`).

The t quantile is computed here (`t_quantile`, from the regularised incomplete beta
function), so the runtime needs no scipy. Words as in views.py: `replicates` are the runs
of a cell, `pairs` the paired differences between two cells.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

from hpcxfer.collect.aggregate import (
    AXES,
    DEFAULT_BY,
    REPLICATE_FIELDS,
    TIE,
    hashable,
    protocol_label,
    size_key,
    sort_key,
    varying,
)
from hpcxfer.collect.moments import mean_std
from hpcxfer.collect.views import Column, View, interval, key, num, signed
from hpcxfer.errors import ConfigError
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, names_of

#: The interval's coverage.
LEVEL = 0.95
#: The protocol a paired view compares with when --ref is not given, first found wins.
DEFAULT_REFS = ("common", "scratch")
#: The fields of every row `paired_rows` makes, in order (before the varying settings).
FIELDS = ["examples_per_class", "protocol", "ref", "pairs", "mean_diff", "sd_diff", "ci_low", "ci_high",
          "wins", "losses", "ties", "protocol_mean", "ref_mean", "replicates", "ref_replicates"]


# ---------------------------------------------------------------- Student's t without scipy
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t with `df` > 0 degrees of freedom (scipy.stats.t.ppf),
    by bisection on `t_cdf` to double precision (remembered: a study asks for few df)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, not p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------- paired differences
def paired_stats(diffs: Sequence[float]) -> dict:
    """pairs, mean_diff, sd_diff, ci_low, ci_high, wins, losses, ties of paired differences
    (None where undefined: no pair; the interval and sd below two)."""
    n = len(diffs)
    mean, sd = mean_std(diffs)
    out = {"pairs": n, "mean_diff": mean, "sd_diff": sd if n > 1 else None, "ci_low": None, "ci_high": None,
           "wins": sum(1 for d in diffs if d > TIE), "losses": sum(1 for d in diffs if d < -TIE)}
    out["ties"] = n - out["wins"] - out["losses"]
    if n > 1:
        half = t_quantile(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
        out["ci_low"], out["ci_high"] = mean - half, mean + half
    return out


def pair_up(rows: Iterable[dict], ref_rows: Iterable[dict], key: Sequence[str], metric: str = "val_acc") -> list[tuple]:
    """(value, reference value) for every replicate key both hold a number for, in key order."""
    def by_key(rs):
        return {tuple(hashable(r[k]) for k in key): r[metric] for r in rs
                if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)}

    mine, theirs = by_key(rows), by_key(ref_rows)
    return [(mine[k], theirs[k]) for k in sorted(mine.keys() & theirs.keys(), key=repr)]


def compare_rows(rows: Iterable[dict], ref_rows: Iterable[dict], key: Sequence[str] = REPLICATE_FIELDS,
                 metric: str = "val_acc") -> dict:
    """`paired_stats` of `rows` minus `ref_rows` paired on `key`, with both sides' means over the pairs."""
    pairs = pair_up(rows, ref_rows, key, metric)
    out = paired_stats([a - b for a, b in pairs])
    out["protocol_mean"] = mean_std([a for a, _ in pairs])[0]
    out["ref_mean"] = mean_std([b for _, b in pairs])[0]
    return out


def matches(task: dict, ref: str) -> bool:
    """Whether a fine-tuning task is the protocol `ref` names: a named protocol (`common`,
    `scratch`, `optimal`), its label (`common (n7 h8 d30 f0)`) or its fields (`n7 h8 d30 f0`)."""
    label = protocol_label(task)
    return ref in names_of({**task, "stage": "finetune"}) or ref == label or ref == label.split(" (")[-1].rstrip(")")


def labels(rows: Iterable[dict]) -> list[str]:
    """The short names of the protocols in `rows` (a named protocol's name, else its fields), sorted."""
    out = set()
    for r in rows:
        if r.get("stage") == "finetune":
            names = names_of({**r, "stage": "finetune"})
            out.update(names or [protocol_label(r)])
    return sorted(out)


def finetune_rows(records) -> list[dict]:
    """The finished fine-tuning rows of a `StudyRecords` (or of a list of rows)."""
    return [r for r in getattr(records, "rows", records) if r.get("stage") == "finetune"]


def reference(records, ref: str | None = None) -> str | None:
    """`ref` if some finished task runs it, else a ConfigError (option `--ref`) naming the
    labels available; without `ref`, the first of `DEFAULT_REFS` the study has, or None."""
    rows = finetune_rows(records)
    if ref is None:
        return next((name for name in DEFAULT_REFS if any(matches(r, name) for r in rows)), None)
    if not any(matches(r, ref) for r in rows):
        raise ConfigError(None, "--ref", f"no finished task runs protocol {ref!r}",
                          f"choose from {', '.join(labels(rows)) or 'nothing: no fine-tuning task has a result'}")
    return ref


def paired_rows(records, ref: str | None = None, by: Sequence[str] = DEFAULT_BY, metric: str = "val_acc") -> list[dict]:
    """Each protocol's paired difference from the reference protocol `ref`, per size.

    `records`: a `StudyRecords` (hpcxfer/collect/read.py) or its `rows` (finished task
    dicts with their metrics). `ref`: a named protocol, a label or n/h/d/f fields (see
    `matches`); None takes `DEFAULT_REFS`' first one present. `by`: the axes of a cell, as
    in aggregate.summarize; it must hold the protocol fields and the size, and the axes
    not in it are the replicate key that pairs runs (default: split and seed). A protocol
    is compared with the reference cell that agrees with it on every other axis of `by`
    (the same size, epochs, batch size, ...).

    One row per (cell, reference) with `FIELDS` (accuracies as fractions; `protocol_mean`
    and `ref_mean` over the pairs only; `replicates` / `ref_replicates` count every run of
    either cell with a number), plus each axis of `by` beyond the protocol fields and size.
    The reference itself gets no row. Sorted by size, then the other axes, then protocol.
    Raises ConfigError (option `--ref`) for a reference no task of the study runs, naming
    the labels available, and for a `by` without the protocol and the size.
    """
    rows = finetune_rows(records)
    by = tuple(by)
    lacking = [f for f in ("examples_per_class", *PROTOCOL_FIELDS) if f not in by]
    if lacking:
        raise ConfigError(None, "--by", f"a paired view needs the protocol and the size in its cells, not {lacking[0]!r}",
                          "leave --by out")
    ref = reference(rows, ref)
    if ref is None:
        return []
    key = [a for a in AXES if a not in by]
    context = [a for a in by if a not in PROTOCOL_FIELDS]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(hashable(r[a]) for a in by), []).append(r)
    refs: dict[tuple, list[dict]] = {}
    for members in cells.values():
        if matches(members[0], ref):
            refs.setdefault(tuple(hashable(members[0][a]) for a in context), []).extend(members)
    out = []
    for members in cells.values():
        t = members[0]
        ref_members = refs.get(tuple(hashable(t[a]) for a in context))
        if not ref_members or matches(t, ref):
            continue
        row = {"examples_per_class": t["examples_per_class"], "protocol": protocol_label(t),
               "ref": protocol_label(ref_members[0]), **compare_rows(members, ref_members, key, metric),
               "replicates": sum(1 for r in members if isinstance(r.get(metric), (int, float))),
               "ref_replicates": sum(1 for r in ref_members if isinstance(r.get(metric), (int, float)))}
        row.update({a: t[a] for a in by if a not in row and a not in PROTOCOL_FIELDS})
        row.update({a: t[a] for a in PROTOCOL_FIELDS})
        out.append(row)
    out.sort(key=lambda r: sort_key(r, by))
    return out


# ---------------------------------------------------------------- the view
def paired_view(records, ref: str | None = None) -> View:
    """`collect --view paired`: `paired_rows` with the method in its notes."""
    tuned = finetune_rows(records)
    chosen = reference(tuned, ref)
    rows = paired_rows(tuned, chosen) if chosen else []
    extra = varying(rows, [a for a in DEFAULT_BY if a not in ("examples_per_class", *PROTOCOL_FIELDS)])
    columns = [key("examples_per_class", "per class", numeric=True), key("protocol")] + [key(a) for a in extra]
    if len({r["ref"] for r in rows}) > 1:
        columns.append(key("ref", "reference"))
    columns += [key("pairs", numeric=True),
                Column("protocol %", lambda r: num(r["protocol_mean"], 100)),
                Column("reference %", lambda r: num(r["ref_mean"], 100)),
                Column("difference", lambda r: signed(None if r["mean_diff"] is None else r["mean_diff"] * 100,
                                                      unit=" pts")),
                Column("95 % interval", lambda r: interval(r["ci_low"], r["ci_high"], 100)),
                Column("wins / losses / ties", lambda r: f"{r['wins']} / {r['losses']} / {r['ties']}")]
    notes = [(f"difference = protocol minus reference ({chosen}) in validation accuracy points, paired by split and "
             "seed: one pair per split and seed that both finished (the same images); protocol % and reference % "
             "are means over those pairs"),
             ("95 % interval = mean difference ± t(0.975, pairs - 1) x sd / sqrt(pairs) (Student's t over the pairs); "
             "n/a with fewer than two pairs; an interval that excludes zero is a difference beyond the study's noise"),
             "wins / losses / ties: pairs where the protocol is above / below / level with the reference"]
    if chosen is None:
        notes.append("this study runs neither common nor scratch: name the reference with --ref "
                     f"(one of: {', '.join(labels(tuned)) or 'none finished yet'})")
    few = sorted({str(r["examples_per_class"]) for r in rows if r["pairs"] < 2}, key=lambda s: size_key(s))
    if few:
        notes.append(f"fewer than two pairs at {', '.join(few)}/class: no interval there")
    title = f"Paired differences from {chosen}, per size" if chosen else "Paired differences from a reference protocol"
    return View("paired", title, columns, rows, notes, [*FIELDS, *extra])
