"""The paper's Figs. 1-6 from a study's cells: accuracy against the varied setting, one line
(or bar group) per size, error bars one standard deviation over splits.

Building a figure's data (`paper_figures`) is pure; drawing uses matplotlib's object API on
the Agg canvas (no pyplot state, no display). A figure whose setting the study does not vary
is left out, and `skipped_figures` says why.
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
    Spec("fig6", "Fig. 6: optimal vs common vs scratch", None),
)


@dataclass
class Series:
    label: str
    x: list  # setting values (line) or sizes (bars)
    mean: list[float]  # accuracy, %
    std: list[float]
    n: list[int]  # replicates (splits) behind each point
    size: object = None  # a line's target size: its colour (and its panel in small multiples)
    style: tuple = ()  # the values of the other varied settings (e.g. d): its line style


@dataclass
class FigureData:
    spec: Spec
    series: list[Series]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def replicates(self) -> list[int]:
        return sorted({k for se in self.series for k in se.n})

    def over(self) -> str:
        """How many splits each point averages: `4 splits`, or `2-4 splits` where some are missing."""
        ks = self.replicates
        text = str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
        return f"{text} split{'' if ks == [1] else 's'}"

    @property
    def caption(self) -> str:
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


#: Colours by size (colour-blind safe, Okabe & Ito), line styles by the other varied setting.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
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


def _colour(sizes: list, size) -> str:
    return COLOURS[sizes.index(size) % len(COLOURS)] if size in sizes else COLOURS[0]


def _offsets(xs: list, k: int) -> list[float]:
    """Horizontal shifts of k series' error bars at the same x, so that none hides another:
    together they span a third of the smallest step between x values."""
    steps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    span = (min(steps) if steps else 1) / 3
    return [0.0] * k if k < 2 else [(i - (k - 1) / 2) * span / (k - 1) for i in range(k)]


def _panels(data: FigureData) -> list[tuple[str | None, list[Series]]]:
    """One panel, or one per size (small multiples) where one would hold too many series."""
    if data.spec.x is None or len(data.series) <= MAX_SERIES:
        return [(None, data.series)]
    sizes = sorted({se.size for se in data.series}, key=size_key)
    return [(_size(s), [se for se in data.series if se.size == s]) for s in sizes]


def draw(data: FigureData) -> Figure:
    if data.spec.x is None:
        return _draw_bars(data)
    panels = _panels(data)
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(7.5 if cols == 1 else 2.6 * cols + 1.6, 4.2 if rows == 1 else 2.5 * rows + 0.9),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    sizes = sorted({se.size for se in data.series}, key=size_key)
    styles = sorted({se.style for se in data.series})
    xs = sorted({x for se in data.series for x in se.x})
    gid = 0
    for ax, (title, series) in zip(axes, panels):
        shift = _offsets(xs, len(series))
        for j, se in enumerate(series):
            k = styles.index(se.style)
            line, _, _ = ax.errorbar([x + shift[j] for x in se.x], se.mean, yerr=se.std, capsize=2.5,
                                     color=_colour(sizes, se.size), linestyle=STYLES[k % len(STYLES)],
                                     marker=MARKERS[k % len(MARKERS)], markersize=4, linewidth=1.3,
                                     label=se.label if title is None else (", ".join(se.style) or se.label))
            line.set_gid(f"series-{gid}")
            gid += 1
        if title is not None:
            ax.set_title(title, fontsize=9)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(LABELS.get(data.spec.x, data.spec.x), fontsize=9)
    fig.supylabel("validation accuracy (%)", fontsize=9)
    fig.suptitle(data.caption, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(panels) > 1:  # every panel has the same styles; colour and title name the size
        title = ", ".join(dict.fromkeys(part.split(" ")[0] for st in styles for part in st)) or None
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title, title_fontsize=8)
    else:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
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
    fig.legend(loc="outside right upper", fontsize=8)
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
