"""The paper's Figs. 1-6 from a study's cells: accuracy against the varied setting, one line
(or bar group) per size, error bars one standard deviation over splits.

Building a figure's data (`paper_figures`) is pure; drawing uses matplotlib's object API on
the Agg canvas (no pyplot state, no display). A figure whose setting the study does not vary
is left out, and `skipped_figures` says why.
"""

from __future__ import annotations

import io
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
    n: list[int]


@dataclass
class FigureData:
    spec: Spec
    series: list[Series]

    @property
    def name(self) -> str:
        return self.spec.name


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
                             [c["replicates"] for c in pts]))
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


def draw(data: FigureData) -> Figure:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if data.spec.x is None:
        sizes = sorted({s for se in data.series for s in se.x}, key=size_key)
        width = 0.8 / len(data.series)
        for i, se in enumerate(data.series):
            pos = [sizes.index(s) + (i - (len(data.series) - 1) / 2) * width for s in se.x]
            bars = ax.bar(pos, se.mean, width, yerr=se.std, capsize=3, label=se.label)
            for j, patch in enumerate(bars.patches):
                patch.set_gid(f"series-{i}-bar-{j}")
        ax.set_xticks(range(len(sizes)), [_size(s) for s in sizes])
        ax.set_xlabel("target examples per class")
    else:
        for i, se in enumerate(data.series):
            line, _, _ = ax.errorbar(se.x, se.mean, yerr=se.std, marker="o", capsize=3, label=se.label)
            line.set_gid(f"series-{i}")
        ax.set_xlabel(LABELS.get(data.spec.x, data.spec.x))
        xs = sorted({x for se in data.series for x in se.x})
        ax.set_xticks(xs)
    ax.set_ylabel("validation accuracy (%), mean ± std over splits")
    ax.set_title(data.spec.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def render(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def inline_svg(fig: Figure) -> str:
    """The figure as an <svg> element to put inside HTML (XML prologue and doctype removed)."""
    text = render(fig, "svg").decode()
    return text[text.index("<svg"):]


def write_figures(figures: Sequence[FigureData], folder: Path) -> list[Path]:
    """Each figure as <name>.png and <name>.svg in `folder`, written atomically."""
    written = []
    for data in figures:
        fig = draw(data)
        for fmt in ("png", "svg"):
            path = Path(folder) / f"{data.name}.{fmt}"
            atomic_write_bytes(path, render(fig, fmt))
            written.append(path)
    return written
