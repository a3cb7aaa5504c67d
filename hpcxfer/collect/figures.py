"""The paper's Figs. 1-6 from a study's cells, the paired differences from a reference
(`delta`) and learning curves (issue #12's presentation).

Accuracy against the varied setting, one line (or bar group) per size, error bars one
standard deviation over splits. A line's colour is its size (the same colour for a size in
every figure) and its line style the other varied setting (Fig. 3's d); where one axes
would hold more than MAX_SERIES lines the figure becomes small multiples, a panel per
size. Error bars at one x are shifted apart, legends sit outside the data, and every title
says over how many splits a point is averaged.

Building a figure's data (`paper_figures`, `delta_figure`, `curve_figure`) is pure; drawing
uses matplotlib's object API on the Agg canvas (no pyplot state, no display). A figure
whose setting the study does not vary is left out, and `skipped_figures` says why. Output
is a 300 dpi PNG, a PDF and an SVG, the same bytes for the same study (no dates, salted
SVG ids).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpcxfer.collect.aggregate import size_key, value_key, varying
from hpcxfer.collect.reports import NAMES, SETTINGS, is_named
from hpcxfer.fileio import atomic_write_bytes
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, table2_row

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


@dataclass
class FigureData:
    spec: Spec
    series: list[Series]
    titles: dict = field(default_factory=dict)  # a size's panel title, where more than the size
    design: tuple[int, int] | None = None  # the study's (splits, seeds) of fine-tuning, where known

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
        if self.spec.kind == "delta":
            return f"{self.spec.title}; mean paired difference over {self.over('pair')}, 95 % interval"
        return f"{self.spec.title}; mean ± std over {self.over()}"


def _matches(cell: dict, fixed: dict) -> bool:
    for f, v in fixed.items():
        want = table2_row(cell["examples_per_class"])[f] if v == "table2" else v
        if cell.get(f) != want:
            return False
    return True


def _size(s) -> str:
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
        series.append(Series(_size(first["examples_per_class"]) + extra, [c[spec.x] for c in pts],
                             [c["val_acc_mean"] * 100 for c in pts], [c["val_acc_std"] * 100 for c in pts],
                             [c["replicates"] for c in pts], first["examples_per_class"],
                             tuple(f"{SHORT.get(a, a)} {first[a]}" for a in others)))
    return FigureData(spec, [s for s in series if len(s.x) >= 2])


def bar_figure(spec: Spec, cells: Sequence[dict]) -> FigureData:
    series = []
    for name in NAMES:
        pts = sorted((c for c in cells if c["val_acc_mean"] is not None and is_named(c, name)),
                     key=lambda c: size_key(c["examples_per_class"]))
        if pts:
            series.append(Series(name, [c["examples_per_class"] for c in pts], [c["val_acc_mean"] * 100 for c in pts],
                                 [c["val_acc_std"] * 100 for c in pts], [c["replicates"] for c in pts]))
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
    optimal) and the best by final accuracy (named in the panel's title), mean ± std over
    replicates (collect/metrics.py's curves)."""
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
            shown.append(("best found", best))
            titles[size] = f"{_size(size)}; best: {best.cell['protocol']}"
        for role, c in shown:
            keep = c.mean[:, j] == c.mean[:, j]  # epochs with a value
            series.append(Series(role, c.epochs[keep].tolist(), (c.mean[keep, j] * 100).tolist(),
                                 (c.std[keep, j] * 100).tolist(), c.n[keep].tolist(), size, (role,), role))
    return FigureData(CURVES, series, titles) if series else None


def delta_figure(rows: Sequence[dict]) -> FigureData | None:
    """Each protocol's paired difference from the reference (collect/paired.py `paired_rows`)
    with its 95 % interval, one panel per size: the named protocols, then the largest
    differences, MAX_SHOWN a panel."""
    done = [r for r in rows if r.get("mean_diff") is not None]
    if not done:
        return None
    refs = sorted({r["ref"] for r in done})
    spec = Spec("delta", f"Difference from {' / '.join(refs)} by size (validation accuracy points)", None, kind="delta")
    series = []
    for size in sorted({r["examples_per_class"] for r in done}, key=size_key):
        at = [r for r in done if r["examples_per_class"] == size]
        named = [r for r in at if _role(r)]
        rest = sorted((r for r in at if not _role(r)), key=lambda r: (-r["mean_diff"], r["protocol"]))
        for r in reversed((named + rest)[:MAX_SHOWN]):  # drawn bottom-up: the named on top
            low = r["ci_low"] if r["ci_low"] is not None else r["mean_diff"]
            high = r["ci_high"] if r["ci_high"] is not None else r["mean_diff"]
            series.append(Series(r["protocol"], [r["protocol"]], [r["mean_diff"] * 100], [0.0], [r["pairs"]], size,
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
        left_out.append("Difference from the reference: left out (no protocol paired with common or scratch)")
    design = study_design(tuned)
    for data in figures:
        data.design = design
    return figures, left_out


def study_design(tuned: Sequence[dict]) -> tuple[int, int]:
    """(splits, seeds) among a study's finished fine-tuning tasks (`finetune_rows`): what
    its figures' captions say a replicate is."""
    return len({r.get("split") for r in tuned}), len({r.get("seed") for r in tuned})


#: Colours by size (colour-blind safe, Okabe & Ito), line styles by the other varied setting.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
#: One axes holds at most this many series; more are drawn as small multiples, one per size.
MAX_SERIES = 8
#: Output: 300 dpi PNG for print, PDF and SVG as vectors (`collect --plots`).
FORMATS = ("png", "pdf", "svg")
DPI = 300
#: Fixed so that the same study gives the same bytes (docs/design.md §2).
RC = {"svg.hashsalt": "hpcxfer", "svg.fonttype": "path"}
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None},
            "svg": {"Date": None}}


#: A protocol's colour where it has a role: Fig. 6's bar colours, black for the best found.
ROLES = {"scratch": COLOURS[0], "common": COLOURS[1], "optimal": COLOURS[2], "best found": COLOURS[6]}
OTHER = "#777777"


def _colour(keys: list, key) -> str:
    return COLOURS[keys.index(key) % len(COLOURS)] if key in keys else COLOURS[0]


def _hue(series: Series, sizes: list) -> str:
    """A line's colour: its role's (curves, deltas), else its size's."""
    if series.size is not None and series.hue is None and not series.low:
        return _colour(sizes, series.size)
    return ROLES.get(str(series.hue), OTHER)


def _offsets(xs: list, k: int) -> list[float]:
    """Horizontal shifts of k series' error bars at the same x, so that none hides another:
    together they span a third of the smallest step between x values."""
    steps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    span = (min(steps) if steps else 1) / 3
    return [0.0] * k if k < 2 else [(i - (k - 1) / 2) * span / (k - 1) for i in range(k)]


def _panels(data: FigureData) -> list[tuple[str | None, list[Series]]]:
    """One panel, or one per size (small multiples) where one would hold too many series."""
    if data.spec.kind == "bars" or (data.spec.kind == "line" and len(data.series) <= MAX_SERIES):
        return [(None, data.series)]
    sizes = sorted({se.size for se in data.series}, key=size_key)
    return [(data.titles.get(s, _size(s)), [se for se in data.series if se.size == s]) for s in sizes]


def _grid(n: int, *, width: float = 2.6, height: float = 2.5, cols: int = 4, sharey: bool = True
          ) -> tuple[Figure, list]:
    """A figure of `n` panels (small multiples, `cols` a row), the unused ones hidden."""
    cols = min(n, cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(7.5 if cols == 1 else width * cols + 1.6, 4.2 if rows == 1 else height * rows + 0.9),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, sharex=True, sharey=sharey, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend(fig: Figure, axes: list, title: str | None = None) -> None:
    """One legend for the figure, outside the data (right of the panels)."""
    seen: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=8, title=title,
                   title_fontsize=8)


def _finish(fig: Figure, axes: list, data: FigureData, xlabel: str, ylabel: str | None) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    fig.supxlabel(xlabel, fontsize=9)
    if ylabel:
        fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(data.caption, fontsize=10)


def draw(data: FigureData) -> Figure:
    kind = data.spec.kind
    if kind == "bars":
        return _draw_bars(data)
    if kind == "delta":
        return _draw_delta(data)
    panels = _panels(data)
    fig, axes = _grid(len(panels))
    sizes = sorted({se.size for se in data.series}, key=size_key)
    styles = sorted({se.style for se in data.series}, key=lambda st: [list(ROLES).index(p) if p in ROLES else 9 for p in st] + list(st))
    xs = sorted({x for se in data.series for x in se.x})
    gid = 0
    for ax, (title, series) in zip(axes, panels):
        shift = _offsets(xs, len(series)) if kind == "line" else [0.0] * len(series)
        for j, se in enumerate(series):
            k = styles.index(se.style)
            colour = _hue(se, sizes)
            label = se.label if title is None else (", ".join(se.style) or se.label)
            if kind == "curves":  # many epochs: a line and a band of ± std
                (line,) = ax.plot(se.x, se.mean, color=colour, linestyle=STYLES[k % len(STYLES)], linewidth=1.3,
                                  label=label)
                ax.fill_between(se.x, [m - d for m, d in zip(se.mean, se.std)],
                                [m + d for m, d in zip(se.mean, se.std)], color=colour, alpha=0.12, linewidth=0)
            else:
                line, _, _ = ax.errorbar([x + shift[j] for x in se.x], se.mean, yerr=se.std, capsize=2.5,
                                         color=colour, linestyle=STYLES[k % len(STYLES)],
                                         marker=MARKERS[k % len(MARKERS)], markersize=4, linewidth=1.3, label=label)
                ax.set_xticks(xs)
            line.set_gid(f"series-{gid}")
            gid += 1
        if title is not None:
            ax.set_title(title, fontsize=9)
    _finish(fig, axes, data, LABELS.get(data.spec.x, data.spec.x), "validation accuracy (%)")
    words = dict.fromkeys(part.split(" ")[0] for st in styles for part in st)
    # small multiples: colour and panel title name the size, the legend the other setting (d)
    _legend(fig, axes, ", ".join(words) if len(panels) > 1 and kind == "line" and set(words) <= set(SHORT.values())
            else None)
    return fig


def _draw_delta(data: FigureData) -> Figure:
    """Paired differences as points with their 95 % interval, protocols down the side, one
    panel per size, a line at zero (the reference)."""
    sizes = sorted({se.size for se in data.series}, key=size_key)
    most = max(sum(1 for se in data.series if se.size == s) for s in sizes)
    fig, axes = _grid(len(sizes), width=3.4, height=0.32 * most + 0.9, cols=3, sharey=False)
    gid = 0
    for ax, size in zip(axes, sizes):
        at = [se for se in data.series if se.size == size]
        for i, se in enumerate(at):
            m = se.mean[0]
            colour = _hue(se, sizes)
            line, _, _ = ax.errorbar([m], [i], xerr=[[m - se.low[0]], [se.high[0] - m]], fmt="o", color=colour,
                                     capsize=2.5, markersize=4)
            line.set_gid(f"series-{gid}")
            gid += 1
        ax.axvline(0, color="#555", linewidth=0.8)
        ax.set_yticks(range(len(at)), [f"{se.label} ({se.n[0]})" for se in at], fontsize=7)
        ax.set_ylim(-0.6, len(at) - 0.4)
        ax.set_title(_size(size), fontsize=9)
    _finish(fig, axes, data, "difference from the reference (accuracy points); (pairs) after each protocol", None)
    return fig


def _draw_bars(data: FigureData) -> Figure:
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = sorted({s for se in data.series for s in se.x}, key=size_key)
    width = 0.8 / len(data.series)
    for i, se in enumerate(data.series):
        pos = [sizes.index(s) + (i - (len(data.series) - 1) / 2) * width for s in se.x]
        bars = ax.bar(pos, se.mean, width, yerr=se.std, capsize=3, label=se.label, color=COLOURS[i % len(COLOURS)])
        for j, patch in enumerate(bars.patches):
            patch.set_gid(f"series-{i}-bar-{j}")
    ax.set_xticks(range(len(sizes)), [_size(s) for s in sizes])
    ax.set_xlabel("target examples per class", fontsize=9)
    ax.set_ylabel("validation accuracy (%)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(data.caption, fontsize=10)
    _legend(fig, [ax])
    return fig


def render(fig: Figure, fmt: str) -> bytes:
    """The figure's bytes in `fmt`; the same figure gives the same bytes (no date, salted ids)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=METADATA.get(fmt))
    return buf.getvalue()


_ID = re.compile(r'(\bid=")([^"]+)(")|(url\(#)([^)]+)(\))|(href=")#([^"]+)(")')


def inline_svg(fig: Figure, prefix: str = "") -> str:
    """The figure as an <svg> element to put inside HTML (XML prologue and doctype removed),
    every id and reference to one prefixed with `prefix` so that figures on one page never
    share an id."""
    text = render(fig, "svg").decode()
    text = text[text.index("<svg"):]
    if not prefix:
        return text

    def rename(m: re.Match) -> str:
        if m.group(1):
            return f'{m.group(1)}{prefix}{m.group(2)}{m.group(3)}'
        if m.group(4):
            return f"{m.group(4)}{prefix}{m.group(5)}{m.group(6)}"
        return f'{m.group(7)}#{prefix}{m.group(8)}{m.group(9)}'

    return _ID.sub(rename, text)


def write_figures(figures: Sequence[FigureData], folder: Path) -> list[Path]:
    """Each figure as <name>.png (300 dpi), .pdf and .svg in `folder`, written atomically."""
    written = []
    for data in figures:
        fig = draw(data)
        for fmt in FORMATS:
            path = Path(folder) / f"{data.name}.{fmt}"
            atomic_write_bytes(path, render(fig, fmt))
            written.append(path)
    return written
