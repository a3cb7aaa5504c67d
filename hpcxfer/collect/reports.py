"""The paper's views of a study, built from its cells (see aggregate.summarize).

table1: training and validation loss by n and size, with the average gap (section 3.1).
table2: the best protocol per size with its accuracy, ties and unfinished cells said.
compare: optimal vs common vs scratch and the best (Table 2's rule), with relative improvements.
paper: every published number beside ours (an ImageNet study; docs/design.md §1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hpcxfer.collect import paper
from hpcxfer.collect.aggregate import DEFAULT_BY, TIE, cell_fields, size_key, value_key, varying
from hpcxfer.collect.paired import compare_rows
from hpcxfer.collect.read import StudyRecords
from hpcxfer.collect.views import Column, View, interval, key, num, pm, signed
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, names_of

#: The section 3.1 sweep (Fig. 1, Table 1): n varies, h = 8, d = 30, f = 0.
SWEEP_N = {"high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}
#: Axes that are neither the protocol nor the size: settings such as epochs or batch size.
SETTINGS = tuple(a for a in DEFAULT_BY if a not in ("examples_per_class", *PROTOCOL_FIELDS))


def _sizes(cells: Sequence[dict]) -> list:
    return sorted({c["examples_per_class"] for c in cells}, key=size_key)


def _settings(cell: dict, axes: Sequence[str]) -> str:
    return ", ".join(f"{a} {cell[a]}" for a in axes)


def label(cell: dict, axes: Sequence[str] = ()) -> str:
    extra = _settings(cell, axes)
    return f"{cell['protocol']} [{extra}]" if extra else cell["protocol"]


def is_named(cell: dict, name: str) -> bool:
    return name in names_of({**cell, "stage": "finetune"})


def _relative(a, b) -> float | None:
    """a relative to b in percent: (a / b - 1) x 100."""
    return None if a is None or not b else (a / b - 1.0) * 100.0


def _pct(v):
    return None if v is None else v * 100.0


def _best(at: Sequence[dict]) -> tuple[list[dict], dict | None]:
    """The cells tied for the highest mean accuracy, and the best of the rest."""
    done = sorted((c for c in at if c["val_acc_mean"] is not None), key=lambda c: -c["val_acc_mean"])
    if not done:
        return [], None
    top = done[0]["val_acc_mean"]
    tied = [c for c in done if top - c["val_acc_mean"] <= TIE]
    rest = done[len(tied):]
    return tied, (rest[0] if rest else None)


# ---------------------------------------------------------------- Table 1
def table1(cells: Sequence[dict], dataset: str | None = None) -> View:
    sel = [c for c in cells if all(c.get(k) == v for k, v in SWEEP_N.items())]
    sizes, extra = _sizes(sel), varying(sel, SETTINGS)
    groups: dict[tuple, dict] = {}
    for c in sel:
        row = groups.setdefault((c["transfer_layers"], *(value_key(c[a]) for a in extra)),
                                {"transfer_layers": c["transfer_layers"], **{a: c[a] for a in extra}, "missing": 0})
        s = c["examples_per_class"]
        row.update({f"train_loss_{s}": c["train_loss_mean"], f"train_loss_std_{s}": c["train_loss_std"],
                    f"val_loss_{s}": c["val_loss_mean"], f"val_loss_std_{s}": c["val_loss_std"],
                    f"replicates_{s}": c["replicates"]})
        row["missing"] += c["missing"]
    with_paper = paper.applies(dataset)
    rows = []
    for k in sorted(groups):
        row = groups[k]
        gaps = [row[f"val_loss_{s}"] - row[f"train_loss_{s}"] for s in sizes
                if row.get(f"val_loss_{s}") is not None and row.get(f"train_loss_{s}") is not None]
        row["gap"] = sum(gaps) / len(gaps) if gaps else None
        published = paper.TABLE1.get(row["transfer_layers"]) if with_paper else None
        if published:
            for s, (tr, va) in published["loss"].items():
                row[f"paper_train_loss_{s}"], row[f"paper_val_loss_{s}"] = tr, va
            row["paper_gap"] = published["gap"]
        rows.append(row)

    def pair(s, prefix=""):
        return lambda r: (f"{num(r.get(f'{prefix}train_loss_{s}'), digits=2)} / {num(r.get(f'{prefix}val_loss_{s}'), digits=2)}"
                          if r.get(f"{prefix}val_loss_{s}") is not None else "-")

    columns = [key("transfer_layers", "n", numeric=True)] + [key(a) for a in extra]
    columns += [Column(f"{s}/class train / val", pair(s)) for s in sizes]
    columns += [Column("avg gap", lambda r: num(r["gap"], digits=2)), key("missing", numeric=True)]
    if with_paper:
        columns += [Column(f"paper {s}/class", pair(s, "paper_")) for s in (10, 25, 50)]
        columns += [Column("paper gap", lambda r: num(r.get("paper_gap"), digits=2))]
    notes = [("cells of the section 3.1 sweep (h = 8, d = 30, f = 0); loss means over replicates (splits and seeds); "
             "avg gap = mean over sizes of validation minus training loss")]
    if not sel:
        notes.append("no cell with h = 8, d = 30, f = 0 in this study: Table 1 is empty")
    fields = ["transfer_layers", *extra, "missing"] + [f"{q}_{s}" for s in sizes for q in (
        "train_loss", "train_loss_std", "val_loss", "val_loss_std", "replicates")] + ["gap"]
    return View("table1", "Table 1: training / validation loss by layers transferred (n) and size", columns, rows, notes,
                fields)


# ---------------------------------------------------------------- Table 2
def _members(rows: Sequence[dict], cell: dict) -> list[dict]:
    """The finished tasks of a protocol cell (one per split and seed)."""
    return [r for r in rows if r.get("stage") == "finetune" and all(r.get(a) == cell[a] for a in DEFAULT_BY)]


def verdict(at: Sequence[dict], rows: Sequence[dict] | None = None, extra: Sequence[str] = ()) -> dict:
    """Which of the cells `at` is best, by the one rule Table 2 and compare share: the
    highest mean leads; given the finished task `rows` (StudyRecords.rows), the leader is
    the best only when the 95 % interval of its paired difference from the runner-up
    (collect/paired.py) excludes zero, else the two are tied within the study's noise and
    `best` is None. Without rows, the highest mean is the best. Keys: best, leader, tie,
    within_noise, runner_up, margin, pairs, margin_ci_low, margin_ci_high, and `tied` (the
    leading cells)."""
    tied, runner = _best(at)
    out: dict = {"best": None, "leader": None, "tie": len(tied) > 1, "within_noise": None, "runner_up": None,
                 "margin": None, "pairs": None, "margin_ci_low": None, "margin_ci_high": None, "tied": tied}
    if not tied:
        return out
    b = tied[0]
    out.update({"leader": " = ".join(label(c, extra) for c in tied), "runner_up": label(runner, extra) if runner else None,
                "margin": (b["val_acc_mean"] - runner["val_acc_mean"]) if runner else None})
    if rows is not None and runner is not None and len(tied) == 1:
        st = compare_rows(_members(rows, b), _members(rows, runner))
        out.update({"pairs": st["pairs"], "margin_ci_low": st["ci_low"], "margin_ci_high": st["ci_high"]})
        out["within_noise"] = st["ci_low"] is None or st["ci_low"] <= 0.0 <= st["ci_high"]
    elif rows is not None:
        out["within_noise"] = len(tied) > 1
    out["best"] = None if out["tie"] or out["within_noise"] else out["leader"]
    return out


def verdict_text(r: dict) -> str:
    """A `verdict` as a reader sees it: the best, `tied: A = B` or `tied within noise: A, B`."""
    if r["best"] or not r["leader"]:
        return r["best"] or "-"
    return f"tied: {r['leader']}" if r["tie"] else f"tied within noise: {r['leader']}, {r['runner_up']}"


def table2(cells: Sequence[dict], dataset: str | None = None, rows: Sequence[dict] | None = None) -> View:
    """The best protocol per size, by `verdict`'s rule."""
    extra, with_paper = varying(cells, SETTINGS), paper.applies(dataset)
    out, notes = [], []
    for s in _sizes(cells):
        at = [c for c in cells if c["examples_per_class"] == s]
        v = verdict(at, rows, extra)
        tied = v.pop("tied")
        unfinished = sum(1 for c in at if c["missing"])
        row: dict = {"examples_per_class": s, "best": None, "leader": None, "tie": v["tie"],
                     "within_noise": None, "cells": len(at), "unfinished_cells": unfinished}
        if tied:
            b = tied[0]
            row.update({**{f: (b[f] if all(c[f] == b[f] for c in tied) else [c[f] for c in tied]) for f in PROTOCOL_FIELDS},
                        "val_acc_mean": b["val_acc_mean"], "val_acc_std": b["val_acc_std"],
                        "replicates": min(c["replicates"] for c in tied),
                        "missing": max(c["missing"] for c in tied), **v})
        if with_paper:
            published = paper.TABLE2.get(s)
            if published:
                row.update({f"paper_{f}": published[f] for f in ("transfer_layers", "initial_decay_epochs", "frozen_layers")})
                row["paper_val_acc"] = published["val_acc"]
        out.append(row)
        if len(tied) > 1:
            notes.append(f"{s}/class: {len(tied)} protocols tie at {tied[0]['val_acc_mean'] * 100:.2f} %")
        elif row["within_noise"]:
            why = (f"{row['pairs']} pair{'s' if row['pairs'] != 1 else ''}, too few for an interval"
                   if row["margin_ci_low"] is None else "the paired 95 % interval holds zero")
            notes.append(f"{s}/class: {row['leader']} and {row['runner_up']} are tied within the study's noise ({why})")
        if not tied:
            notes.append(f"{s}/class: no cell has a result yet")
        elif unfinished:
            notes.append(f"{s}/class: {unfinished} of {len(at)} cells still miss tasks; the best may change")

    def margin_interval(r: dict) -> str:
        if r.get("margin_ci_low") is None:
            return "n/a" if r.get("pairs") is not None else "-"
        return interval(r["margin_ci_low"], r["margin_ci_high"], 100, 2)

    columns = [key("examples_per_class", "per class", numeric=True), Column("best protocol", verdict_text, numeric=False),
               Column("val acc %", lambda r: pm(r.get("val_acc_mean"), r.get("val_acc_std"), 100)),
               key("replicates", numeric=True), key("runner_up", "runner-up"),
               Column("margin", lambda r: num(r.get("margin"), 100, 2))]
    if rows is not None:
        columns += [key("pairs", numeric=True), Column("margin 95 % interval", margin_interval)]
    columns += [Column("cells done", lambda r: f"{r['cells'] - r['unfinished_cells']}/{r['cells']}")]
    if with_paper:
        columns += [Column("paper n d f", lambda r: (f"{r['paper_transfer_layers']} {r['paper_initial_decay_epochs']} "
                                                     f"{r['paper_frozen_layers']}") if "paper_val_acc" in r else "-"),
                    Column("paper acc %", lambda r: num(r.get("paper_val_acc")))]
    method = ("best = highest mean validation accuracy over splits and seeds; means within 1e-9 tie; "
              "margin = points over the runner-up")
    if rows is not None:
        method += ("; marked best only when the 95 % interval of the paired difference from the runner-up "
                   "(Student's t over the pairs: same split and seed) excludes zero, else tied within noise")
    notes.insert(0, method)
    fields = ["examples_per_class", "best", "leader", "tie", "within_noise", "cells", "unfinished_cells",
              *PROTOCOL_FIELDS, "val_acc_mean", "val_acc_std", "replicates", "missing", "runner_up", "margin",
              "pairs", "margin_ci_low", "margin_ci_high"]
    return View("table2", "Table 2: the best protocol per size", columns, out, notes, fields)


# ---------------------------------------------------------------- optimal vs common vs scratch
NAMES = ("scratch", "common", "optimal")


def compare(cells: Sequence[dict], dataset: str | None = None, rows: Sequence[dict] | None = None) -> View:
    """Scratch, common and optimal per size (and other varied settings), the best by
    `verdict`'s rule (the finished task `rows` give its paired interval, as in Table 2) and
    relative improvements."""
    extra, with_paper = varying(cells, SETTINGS), paper.applies(dataset)
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((size_key(c["examples_per_class"]), *(value_key(c[a]) for a in extra)), []).append(c)
    out = []
    for k in sorted(groups):
        at = groups[k]
        row: dict = {"examples_per_class": at[0]["examples_per_class"], **{a: at[0][a] for a in extra}}
        for name in NAMES:
            cell = next((c for c in at if is_named(c, name)), None)
            row[f"{name}_mean"] = cell["val_acc_mean"] if cell else None
            row[f"{name}_std"] = cell["val_acc_std"] if cell else None
            row[f"{name}_replicates"] = cell["replicates"] if cell else 0
        v = verdict(at, rows)
        tied = v.pop("tied")
        row.update(v)
        row["leader_mean"] = tied[0]["val_acc_mean"] if tied else None
        row["optimal_vs_common"] = _relative(row["optimal_mean"], row["common_mean"])
        row["optimal_vs_scratch"] = _relative(row["optimal_mean"], row["scratch_mean"])
        row["common_vs_scratch"] = _relative(row["common_mean"], row["scratch_mean"])
        row["leader_vs_common"] = _relative(row["leader_mean"], row["common_mean"])
        if with_paper:
            s = row["examples_per_class"]
            row["paper_optimal"] = paper.TABLE2_ACC.get(s)
            row["paper_common"] = paper.COMMON_AT_10 if s == 10 else None
            row["paper_optimal_vs_common"] = paper.OPTIMAL_VS_COMMON_AT_10 if s == 10 else None
        out.append(row)
    columns = [key("examples_per_class", "per class", numeric=True)] + [key(a) for a in extra]
    columns += [Column(f"{n} %", lambda r, n=n: pm(r[f"{n}_mean"], r[f"{n}_std"], 100)) for n in NAMES]
    columns += [Column("best protocol", verdict_text, numeric=False),
                Column("leader %", lambda r: num(_pct(r["leader_mean"]))),
                Column("optimal vs common", lambda r: signed(r["optimal_vs_common"])),
                Column("optimal vs scratch", lambda r: signed(r["optimal_vs_scratch"])),
                Column("common vs scratch", lambda r: signed(r["common_vs_scratch"])),
                Column("leader vs common", lambda r: signed(r["leader_vs_common"]))]
    if with_paper:
        columns += [Column("paper optimal %", lambda r: num(r.get("paper_optimal"))),
                    Column("paper common %", lambda r: num(r.get("paper_common"))),
                    Column("paper optimal vs common", lambda r: signed(r.get("paper_optimal_vs_common")))]
    notes = [("mean ± std over replicates (splits and seeds, counted in the scratch_, common_ and "
             "optimal_replicates fields); "
             "relative improvement = (a / b - 1) x 100 of mean validation accuracies "
             "(the paper: optimal +47.8 % over common at 10/class)"),
             "best protocol: the leader (highest mean) is named best only as Table 2 names it"
             + (", when the paired 95 % interval of its difference from the runner-up excludes zero, "
                "else tied within noise" if rows is not None else "")]
    missing = [n for n in NAMES if all(r[f"{n}_mean"] is None for r in out)]
    if missing:
        notes.append(f"this study has no finished {', '.join(missing)} cells")
    fields = ["examples_per_class", *extra, *(f"{n}_{s}" for n in NAMES for s in ("mean", "std", "replicates")),
              "best", "leader", "tie", "within_noise", "runner_up", "margin", "pairs", "margin_ci_low", "margin_ci_high",
              "leader_mean", "optimal_vs_common", "optimal_vs_scratch", "common_vs_scratch", "leader_vs_common"]
    return View("compare", "Optimal vs common vs scratch", columns, out, notes, fields)


# ---------------------------------------------------------------- the paper's numbers beside ours
def _find(cells: Sequence[dict], size, **fields) -> dict | None:
    return next((c for c in cells if c["examples_per_class"] == size and c["val_acc_mean"] is not None
                 and all(c.get(k) == v for k, v in fields.items())), None)


def paper_numbers(cells: Sequence[dict], dataset: str | None = None) -> View:
    """Every published number beside ours; for a study on another data set no row (rows of
    dashes would say nothing), one note saying why."""
    columns = [key("quantity"), Column("paper", lambda r: str(r["paper"])),
               Column("ours", lambda r: r["ours"] if isinstance(r["ours"], str) else num(r["ours"], digits=2)),
               Column("difference", lambda r: num(r["difference"], digits=2))]
    fields = ["quantity", "paper", "ours", "difference"]
    title = "The paper's numbers beside ours"
    if not paper.applies(dataset):
        on = f"on {dataset}" if dataset else "not on one data set"
        note = (f"none shown: the published numbers (Plested & Gedeon 2019; Yosinski et al. 2014) are ImageNet's "
                f"and this study is {on}")
        return View("paper", title, columns, [], [note], fields)
    rows = []

    def add(quantity: str, published: float | str, value: float | None) -> None:
        diff = value - published if isinstance(published, float) and value is not None else None
        rows.append({"quantity": quantity, "paper": published, "ours": value, "difference": diff})

    t2 = {r["examples_per_class"]: r for r in table2(cells).rows}
    for s, acc in paper.TABLE2_ACC.items():
        add(f"Table 2: best accuracy at {s}/class (%)", acc, _pct(t2.get(s, {}).get("val_acc_mean")))
    for n, published in paper.TABLE1.items():
        for s, (tr, va) in published["loss"].items():
            cell = _find(cells, s, transfer_layers=n, **SWEEP_N)
            add(f"Table 1: n = {n}, {s}/class, training loss", tr, cell and cell["train_loss_mean"])
            add(f"Table 1: n = {n}, {s}/class, validation loss", va, cell and cell["val_loss_mean"])
    common = _find(cells, 10, **dict(zip(PROTOCOL_FIELDS, (7, 8, 30, 0))))
    optimal = next((c for c in cells if c["examples_per_class"] == 10 and is_named(c, "optimal")
                    and c["val_acc_mean"] is not None), None)
    add("common protocol at 10/class (%)", paper.COMMON_AT_10, _pct(common and common["val_acc_mean"]))
    n5 = _find(cells, 10, transfer_layers=5, **SWEEP_N)
    add("n = 5 (h 8, d 30) at 10/class (%)", paper.N5_AT_10, _pct(n5 and n5["val_acc_mean"]))
    add("optimal vs common at 10/class (relative %)", paper.OPTIMAL_VS_COMMON_AT_10,
        _relative(optimal and optimal["val_acc_mean"], common and common["val_acc_mean"]))
    scratch = _find(cells, "full", **dict(zip(PROTOCOL_FIELDS, (0, 8, 30, 0))))
    add("Yosinski baseB: from scratch, full (%)", paper.YOSINSKI_BASE_B, _pct(scratch and scratch["val_acc_mean"]))
    anb = [c["val_acc_mean"] * 100 for n in range(1, 8) if (c := _find(cells, "full", transfer_layers=n, **SWEEP_N))]
    lo, hi = paper.YOSINSKI_ANB_PLUS
    rows.append({"quantity": "Yosinski AnB+: n = 1..7, full (%)", "paper": f"{lo}-{hi}",
                 "ours": f"{min(anb):.1f}-{max(anb):.1f}" if anb else None, "difference": None})
    notes = ["Plested & Gedeon (2019), ImageNet, mean over 4 splits; Yosinski et al. (2014) released logs"]
    return View("paper", title, columns, rows, notes, fields)


# ---------------------------------------------------------------- the state of the study
def incomplete(records: StudyRecords) -> View:
    rows = sorted(records.incomplete, key=lambda r: (r["state"], r["task_id"]))
    counts = Counter(r["state"] for r in rows)
    columns = [key("task_id", "task"), key("state"), key("epoch", numeric=True), key("detail"), key("log")]
    notes = [", ".join(f"{n} {s}" for s, n in sorted(counts.items()))] if rows else ["every task has its result"]
    if counts.get("pending"):
        notes.append("pending: not started, or interrupted (its detail says at which epoch); `submit` runs it")
    if counts.get("pruned"):
        notes.append("pruned: a search stopped it at a rung (`hpcxfer tune`); a plain `submit` trains it to the end")
    return View("incomplete", "Tasks without a result", columns, rows, notes,
                ["task_id", "stage", "state", "epoch", "detail", "log"])


def study_summary(records: StudyRecords) -> list[str]:
    """What was read: tasks with results, tasks without (by state), what was skipped."""
    counts = Counter(r["state"] for r in records.incomplete)
    line = f"{len(records.tasks)} tasks: {len(records.results)} with results"
    if counts:
        line += ", " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return [line, *records.skipped.notes()]


# ---------------------------------------------------------------- cells and learning curves
def _axis_columns(by: Sequence[str], rows: Sequence[dict]) -> list[Column]:
    columns = [key("examples_per_class", "per class", numeric=True)] if "examples_per_class" in by else []
    if rows and "protocol" in rows[0]:
        columns.append(key("protocol"))
        shown = (*PROTOCOL_FIELDS, "examples_per_class")
        return columns + [key(a) for a in varying(rows, [a for a in by if a not in shown])]
    return columns + [key(a) for a in by if a != "examples_per_class"]


def cells_view(cells: list[dict], by: Sequence[str] = DEFAULT_BY, study: str = "") -> View:
    columns = _axis_columns(by, cells) + [
        key("replicates", numeric=True), key("missing", numeric=True),
        Column("val acc %", lambda r: pm(r["val_acc_mean"], r["val_acc_std"], 100)),
        Column("val loss", lambda r: pm(r["val_loss_mean"], r["val_loss_std"], 1, 3)),
        Column("train loss", lambda r: pm(r["train_loss_mean"], r["train_loss_std"], 1, 3))]
    over = "splits and seeds" if tuple(by) == DEFAULT_BY else "every axis not in --by"
    return View("cells", f"{study}: final validation accuracy, mean ± std over {over}".lstrip(": "), columns, cells,
                ["replicates: those with a result; missing: tasks of the cell without one"], cell_fields(by))


def curves_view(rows: list[dict], by: Sequence[str] = DEFAULT_BY) -> View:
    columns = _axis_columns(by, rows) + [
        key("epoch", numeric=True), key("replicates", numeric=True),
        Column("val acc %", lambda r: pm(r["val_acc_mean"], r["val_acc_std"], 100)),
        Column("val loss", lambda r: pm(r["val_loss_mean"], r["val_loss_std"], 1, 3)),
        Column("train loss", lambda r: pm(r["train_loss_mean"], r["train_loss_std"], 1, 3)),
        Column("train acc %", lambda r: pm(r["train_acc_mean"], r["train_acc_std"], 100))]
    axes = [f for f in cell_fields(by) if f not in ("replicates", "missing") and not f.endswith(("_mean", "_std"))]
    fields = [*axes, "epoch", "replicates"] + [f"{m}_{s}" for m in ("val_acc", "val_loss", "train_loss", "train_acc")
                                               for s in ("mean", "std")]
    return View("curves", "Learning curves: every metrics record, mean ± std over replicates per epoch", columns, rows,
                ["replicates: those that reached the epoch (unfinished tasks count for the epochs they reached)"],
                fields)
