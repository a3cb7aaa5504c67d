"""Drawing the figures of collect/figures.py: matplotlib's object API on the Agg canvas (no
pyplot state, no display). Output is a 300 dpi PNG, a PDF and an SVG, the same bytes for
the same study (no dates, salted SVG ids)."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpcxfer.collect.aggregate import size_key
from hpcxfer.collect.figures import LABELS, SHORT, FigureData, Series, size_label
from hpcxfer.fileio import atomic_write_bytes

#: Colours by size (colour-blind safe, Okabe & Ito), line styles by the other varied setting.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
#: A learning curve of at most this many evaluations marks each (a line alone would
#: suggest values between them that were never measured).
SPARSE = 12
#: One axes holds at most this many series; more are drawn as small multiples, one per size.
MAX_SERIES = 8
#: Output: 300 dpi PNG for print, PDF and SVG as vectors (`collect --plots`).
FORMATS = ("png", "pdf", "svg")
DPI = 300
#: Fixed so that the same study gives the same bytes (docs/design.md §2).
RC = {"svg.hashsalt": "hpcxfer", "svg.fonttype": "path"}
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None},
            "svg": {"Date": None}}


#: A protocol's colour where it has a role: Fig. 6's bar colours, black for the highest mean.
ROLES = {"scratch": COLOURS[0], "common": COLOURS[1], "optimal": COLOURS[2], "highest mean": COLOURS[6]}
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
    steps = [b - a for a, b in itertools.pairwise(xs) if b > a]
    span = (min(steps) if steps else 1) / 3
    return [0.0] * k if k < 2 else [(i - (k - 1) / 2) * span / (k - 1) for i in range(k)]


def _panels(data: FigureData) -> list[tuple[str | None, list[Series]]]:
    """One panel, or one per size (small multiples) where one would hold too many series."""
    if data.spec.kind == "bars" or (data.spec.kind == "line" and len(data.series) <= MAX_SERIES):
        return [(None, data.series)]
    sizes = sorted({se.size for se in data.series}, key=size_key)
    return [(data.titles.get(s, size_label(s)), [se for se in data.series if se.size == s]) for s in sizes]


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
    if kind == "rungs":
        return _draw_rungs(data)
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
            if kind == "curves":  # many epochs: a line and a band of ± std; few: markers at each
                sparse = len(se.x) <= SPARSE
                (line,) = ax.plot(se.x, se.mean, color=colour, linestyle=STYLES[k % len(STYLES)], linewidth=1.3,
                                  marker=MARKERS[k % len(MARKERS)] if sparse else None, markersize=4, label=label)
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
        ax.set_title(size_label(size), fontsize=9)
    _finish(fig, axes, data, "difference from the reference (accuracy points); (pairs) after each protocol", None)
    return fig


#: How a pruned candidate's line is drawn: faded behind the survivors.
FADED_ALPHA = 0.25


def _draw_rungs(data: FigureData) -> Figure:
    """A search's candidates by epoch, one panel per size: survivors in colour, the pruned
    faded (FADED_ALPHA, no legend entry), the winner thick and black, a dashed line at
    each decided rung."""
    sizes = sorted({se.size for se in data.series}, key=size_key)
    went_on = sorted({se.label for se in data.series if not se.faded})  # one colour per protocol in every panel
    fig, axes = _grid(len(sizes), width=3.4, cols=3)
    gid = 0
    for ax, size in zip(axes, sizes):
        at = [se for se in data.series if se.size == size]
        for se in sorted(at, key=lambda se: (not se.faded, se.winner)):  # the winner drawn last, on top
            colour = ROLES["highest mean"] if se.winner else \
                (OTHER if se.faded else COLOURS[went_on.index(se.label) % len(COLOURS)])
            (line,) = ax.plot(se.x, se.mean, color=colour, alpha=FADED_ALPHA if se.faded else 1.0,
                              linewidth=2.4 if se.winner else 1.2, marker="o" if len(se.x) <= SPARSE else None,
                              markersize=3, label=None if se.faded else se.label + (" (winner)" if se.winner else ""))
            line.set_gid(f"series-{gid}")
            gid += 1
        for epoch in data.marks.get(size, []):
            ax.axvline(epoch, color="#555", linestyle="--", linewidth=0.8)
        ax.set_title(size_label(size), fontsize=9)
    _finish(fig, axes, data, "epoch", "validation accuracy (%)")
    fig.suptitle(data.spec.title, fontsize=10)  # the caption (what is faded, dashed) is the report's
    _legend(fig, axes, "went on")
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
    ax.set_xticks(range(len(sizes)), [size_label(s) for s in sizes])
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
