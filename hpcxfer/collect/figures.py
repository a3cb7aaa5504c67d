"""The paper's Figs. 1-6 from a study's cells, the paired differences from a reference
(`delta`) and learning curves (issue #12's presentation).

Accuracy against the varied setting, one line (or bar group) per size, error bars one
standard deviation over splits. A line's colour is its size (the same colour for a size in
every figure) and its line style the other varied setting (Fig. 3's d); where one axes
would hold more than MAX_SERIES lines the figure becomes small multiples, a panel per
size. Error bars at one x are shifted apart, legends sit outside the data, and every title
says over how many splits a point is averaged.

The rung figure (`rung_figure`) shows a searched study's candidates by epoch, the pruned
ones faded. This module builds a figure's data (`paper_figures`, `delta_figure`,
`curve_figure`, and `rung_figure` from the study's files), and apart from that reading it
is pure; collect/plotting.py draws it. A figure whose setting the study does not vary
is left out, and `study_figures` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hpcxfer.collect.aggregate import protocol_label, size_key, value_key, varying
from hpcxfer.collect.reports import NAMES, SETTINGS, is_named
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, table2_row
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.study import metrics_records

LABELS = {"transfer_layers": "layers transferred (n)", "high_lr_layers": "layers at the high learning rate (h)",
          "initial_decay_epochs": "epochs before the first decay (d)", "frozen_layers": "layers frozen (f)"}
SHORT = {"transfer_layers": "n", "high_lr_layers": "h", "initial_decay_epochs": "d", "frozen_layers": "f"}


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    x: str | None  # the varied setting; None for the bar chart of named protocols
    fixed: dict = field(default_factory=dict)  # value, or "table2": Table 2's value for the size
    kind: str = "line"  # line (a paper figure), bars (Fig. 6), curves (by epoch), delta (paired differences)


SPECS = (
    Spec("fig1", "Fig. 1: layers transferred (h = 8, d = 30, f = 0)", "transfer_layers",
         {"high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}),
    Spec("fig2", "Fig. 2: layers at the high learning rate (n = 6, d = 30, f = 0)", "high_lr_layers",
         {"transfer_layers": 6, "initial_decay_epochs": 30, "frozen_layers": 0}),
    Spec("fig3", "Fig. 3: layers transferred with one high-lr layer (h = 1, f = 0), by d", "transfer_layers",
         {"high_lr_layers": 1, "frozen_layers": 0}),
    Spec("fig4", "Fig. 4: epochs before the first decay (n = 6, h = 1, f = 0)", "initial_decay_epochs",
         {"transfer_layers": 6, "high_lr_layers": 1, "frozen_layers": 0}),
    Spec("fig5", "Fig. 5: layers frozen (n = 6, h = 1, d from Table 2)", "frozen_layers",
         {"transfer_layers": 6, "high_lr_layers": 1, "initial_decay_epochs": "table2"}),
    Spec("fig6", "Fig. 6: optimal vs common vs scratch", None, kind="bars"),
)
CURVES = Spec("curves", "Learning curves: validation accuracy by epoch", "epoch", kind="curves")
RUNGS = Spec("rungs", "Search: each candidate's validation accuracy by epoch", "epoch", kind="rungs")
#: Protocols a learning-curve or delta panel shows at most (the named ones first).
MAX_SHOWN = 8


@dataclass
class Series:
    label: str
    x: list  # setting values (line) or sizes (bars)
    mean: list[float]  # accuracy, %
    std: list[float]
    n: list[int]  # replicates (splits) behind each point
    size: object = None  # a line's target size: its panel in small multiples (and its colour)
    style: tuple = ()  # the values of the other varied settings (e.g. d): its line style
    hue: object = None  # what picks its colour where not its size (a protocol's learning curve)
    low: list[float] | None = None  # a delta figure's interval, instead of mean ± std
    high: list[float] | None = None
    faded: bool = False  # a search pruned it (the rung figure)
    winner: bool = False  # the search's winner (the rung figure)


@dataclass
class FigureData:
    spec: Spec
    series: list[Series]
    titles: dict = field(default_factory=dict)  # a size's panel title, where more than the size
    design: tuple[int, int] | None = None  # the study's (splits, seeds) of fine-tuning, where known
    marks: dict = field(default_factory=dict)  # a size's panel -> x values marked by a vertical line (rungs)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def replicates(self) -> list[int]:
        return sorted({k for se in self.series for k in se.n})

    def over(self, word: str = "split") -> str:
        """How many replicates each point averages: `4 splits`, `2-4 splits` where some tasks
        have no result, or `4 replicates (2 splits x 2 seeds)` in a study of several seeds
        (`word` "pair" for a delta figure: `4 pairs (2 splits x 2 seeds)`)."""
        ks = self.replicates or [0]
        text = str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
        if self.design and self.design[1] > 1:
            splits, seeds = self.design
            unit = "replicates" if word == "split" else f"{word}s"
            return f"{text} {unit} ({splits} split{'' if splits == 1 else 's'} x {seeds} seeds)"
        return f"{text} {word}{'' if ks == [1] else 's'}"

    @property
    def caption(self) -> str:
        if self.spec.kind == "rungs":
            return (f"{self.spec.title}; mean over each candidate's members; faded: pruned at a rung; "
                    "dashed: the rungs; thick black: the winner")
        if self.spec.kind == "delta":
            return f"{self.spec.title}; mean paired difference over {self.over('pair')}, 95 % interval"
        return f"{self.spec.title}; mean ± std over {self.over()}"


def _matches(cell: dict, fixed: dict) -> bool:
    for f, v in fixed.items():
        want = table2_row(cell["examples_per_class"])[f] if v == "table2" else v
        if cell.get(f) != want:
            return False
    return True


def size_label(s) -> str:
    """`10/class`: a size as figures name it."""
    return f"{s}/class"


def line_figure(spec: Spec, cells: Sequence[dict]) -> FigureData:
    sel = [c for c in cells if c["val_acc_mean"] is not None and _matches(c, spec.fixed)]
    others = varying(sel, [a for a in (*PROTOCOL_FIELDS, *SETTINGS) if a != spec.x])
    groups: dict[tuple, list[dict]] = {}
    for c in sel:
        groups.setdefault((size_key(c["examples_per_class"]), *(value_key(c[a]) for a in others)), []).append(c)
    series = []
    for k in sorted(groups):
        pts = sorted(groups[k], key=lambda c: c[spec.x])
        first = pts[0]
        extra = "".join(f", {SHORT.get(a, a)} {first[a]}" for a in others)
        series.append(Series(size_label(first["examples_per_class"]) + extra, [c[spec.x] for c in pts],
                             [c["val_acc_mean"] * 100 for c in pts], [c["val_acc_std"] * 100 for c in pts],
                             [c["replicates"] for c in pts], first["examples_per_class"],
                             tuple(f"{SHORT.get(a, a)} {first[a]}" for a in others)))
    return FigureData(spec, [s for s in series if len(s.x) >= 2])


def bar_figure(spec: Spec, cells: Sequence[dict]) -> FigureData:
    """Fig. 6: a bar per named protocol and size, titled with the protocols it has."""
    series = []
    for name in NAMES:
        pts = sorted((c for c in cells if c["val_acc_mean"] is not None and is_named(c, name)),
                     key=lambda c: size_key(c["examples_per_class"]))
        if pts:
            series.append(Series(name, [c["examples_per_class"] for c in pts], [c["val_acc_mean"] * 100 for c in pts],
                                 [c["val_acc_std"] * 100 for c in pts], [c["replicates"] for c in pts]))
    shown = [n for n in reversed(NAMES) if any(se.label == n for se in series)]
    if shown:
        spec = replace(spec, title=f"{spec.title.split(':')[0]}: {' vs '.join(shown)}")
    return FigureData(spec, series)


def paper_figures(cells: Sequence[dict]) -> tuple[list[FigureData], list[str]]:
    """The figures this study has data for, and a line for each it has not."""
    made, skipped = [], []
    for spec in SPECS:
        data = bar_figure(spec, cells) if spec.x is None else line_figure(spec, cells)
        if data.series:
            made.append(data)
        else:
            why = "no finished named protocol" if spec.x is None else f"no size with two or more values of {spec.x}"
            skipped.append(f"{spec.title}: left out ({why} among its cells)")
    return made, skipped


def _role(cell: dict) -> str | None:
    return next((n for n in NAMES if is_named(cell, n)), None)


def curve_figure(curves: Sequence) -> FigureData | None:
    """Validation accuracy by epoch, one panel per size: the named protocols (scratch, common,
    optimal) and the one of highest final mean (named in the panel's title: a leader, not
    Table 2's verdict), mean ± std over replicates (collect/metrics.py's curves)."""
    by_size: dict = {}
    for c in curves:
        if "protocol" in c.cell and "val_acc" in c.metrics and len(c.epochs):
            by_size.setdefault(c.cell["examples_per_class"], []).append(c)
    series, titles = [], {}
    for size in sorted(by_size, key=size_key):
        at = by_size[size]
        j = list(at[0].metrics).index("val_acc")
        finals = [float(c.mean[-1, j]) if c.mean[-1, j] == c.mean[-1, j] else -1.0 for c in at]
        best = at[max(range(len(at)), key=lambda i: (finals[i], -i))]
        shown = [(n, c) for n in NAMES for c in at if is_named(c.cell, n)]
        if all(c is not best for _, c in shown):
            shown.append(("highest mean", best))
            titles[size] = f"{size_label(size)}; highest mean: {best.cell['protocol']}"
        for role, c in shown:
            keep = c.mean[:, j] == c.mean[:, j]  # epochs with a value
            series.append(Series(role, c.epochs[keep].tolist(), (c.mean[keep, j] * 100).tolist(),
                                 (c.std[keep, j] * 100).tolist(), c.n[keep].tolist(), size, (role,), role))
    return FigureData(CURVES, series, titles) if series else None


def delta_figure(rows: Sequence[dict]) -> FigureData | None:
    """Each protocol's paired difference from the reference (collect/paired.py `paired_rows`)
    with its 95 % interval, one panel per size. One order in every panel: the named
    protocols, then the others by their mean difference over sizes, largest first; at most
    MAX_SHOWN protocols."""
    done = [r for r in rows if r.get("mean_diff") is not None]
    if not done:
        return None
    refs = sorted({r["ref"] for r in done})
    spec = Spec("delta", f"Difference from {' / '.join(refs)} by size (validation accuracy points)", None, kind="delta")
    diffs: dict[str, list[float]] = {}
    roles: dict[str, str | None] = {}
    for r in done:
        diffs.setdefault(r["protocol"], []).append(r["mean_diff"])
        roles[r["protocol"]] = _role(r)

    def rank(protocol: str) -> tuple:
        role = roles[protocol]
        if role:
            return (0, NAMES.index(role), 0.0, protocol)
        return (1, 0, -sum(diffs[protocol]) / len(diffs[protocol]), protocol)

    order = sorted(diffs, key=rank)[:MAX_SHOWN]
    series = []
    for size in sorted({r["examples_per_class"] for r in done}, key=size_key):
        at = {r["protocol"]: r for r in done if r["examples_per_class"] == size}
        for protocol in reversed([p for p in order if p in at]):  # drawn bottom-up: the first on top
            r = at[protocol]
            low = r["ci_low"] if r["ci_low"] is not None else r["mean_diff"]
            high = r["ci_high"] if r["ci_high"] is not None else r["mean_diff"]
            series.append(Series(protocol, [protocol], [r["mean_diff"] * 100], [0.0], [r["pairs"]], size,
                                 (), _role(r), [low * 100], [high * 100]))
    return FigureData(spec, series)


def study_figures(collected, ref: str | None = None) -> tuple[list[FigureData], list[str]]:
    """Figs. 1-6 and the delta figure (each protocol's paired difference from `ref`, default
    common else scratch) of a collected study (collect/build.py), and a line for each left out."""
    from hpcxfer.collect.paired import finetune_rows, paired_rows, reference

    figures, left_out = paper_figures(collected.protocol_cells)
    tuned = finetune_rows(collected.records)
    chosen = reference(tuned, ref)
    delta = delta_figure(paired_rows(tuned, chosen)) if chosen else None
    if delta:
        figures.append(delta)
    else:
        left_out.append(f"Difference from the reference: left out (no protocol paired with {chosen or 'common or scratch'})")
    design = study_design(tuned)
    for data in figures:
        data.design = design
    return figures, left_out


def study_design(tuned: Sequence[dict]) -> tuple[int, int]:
    """(splits, seeds) among a study's finished fine-tuning tasks (`finetune_rows`): what
    its figures' captions say a replicate is."""
    return len({r.get("split") for r in tuned}), len({r.get("seed") for r in tuned})


def rung_figure(paths: StudyPaths) -> FigureData | None:
    """A searched study's candidates, a line each, one panel per size: validation accuracy
    by epoch, mean over the candidate's members (split, seed) at each epoch they reached;
    the pruned ones faded, the decided rungs marked, the winner (once the search is done)
    highlighted. None for a study no search decided (collect/search.py reads the decisions)."""
    from hpcxfer.collect.search import decisions, search_view
    from hpcxfer.study import load_tasks

    decided = decisions(paths, [])  # a damaged decision: the figure up to the rung before it (status says so)
    if not decided:
        return None
    tasks = {t.task_id: t for t in load_tasks(paths)}
    view = search_view(paths, list(tasks.values()))
    winners = {str(s.size): s.winner for s in view.sizes} if view else {}
    series, marks = [], {}
    for key, standings in decided[0]["sizes"].items():
        pruned = {s["candidate"] for rec in decided for s in rec["sizes"].get(key, []) if not s["kept"]}
        for standing in sorted(standings, key=lambda s: s["candidate"]):
            members = [tasks[i] for i in standing["tasks"] if i in tasks]
            if not members:
                continue
            size = members[0].examples_per_class
            marks[size] = [rec["epoch"] for rec in decided if key in rec["sizes"]]
            label = protocol_label(members[0].to_dict())
            xs, means, stds, ns = _by_epoch(paths, members)
            series.append(Series(label, xs, means, stds, ns, size, faded=standing["candidate"] in pruned,
                                 winner=label == winners.get(key)))
    return FigureData(RUNGS, series, marks=marks) if series else None


def _by_epoch(paths: StudyPaths, members: Sequence[Task]) -> tuple[list, list[float], list[float], list[int]]:
    """Epochs and the members' mean, std (population) and count of val_acc (%) at each."""
    at: dict[int, list[float]] = {}
    for t in members:
        for r in metrics_records(paths.task(t.task_id)):
            if isinstance(r.get("epoch"), int) and isinstance(r.get("val_acc"), (int, float)):
                at.setdefault(r["epoch"], []).append(100 * r["val_acc"])
    xs = sorted(at)
    means = [sum(at[e]) / len(at[e]) for e in xs]
    stds = [(sum((v - m) ** 2 for v in at[e]) / len(at[e])) ** 0.5 for e, m in zip(xs, means)]
    return xs, means, stds, [len(at[e]) for e in xs]
