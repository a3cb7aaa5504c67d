"""`hpcxfer report`: one self-contained HTML file (tables, notes, figures as inline SVG) a
researcher can mail to a colleague. Rendered from a Jinja template with autoescaping;
only matplotlib's own SVG is marked safe.

The paper's tables and figures come first, then the learning curves and where the numbers
come from (collect/provenance.py), and the raw cells last, collapsed. The same study gives
the same bytes: the date is the study's latest record's, figures carry no date and salted
ids (collect/figures.py), and every list is in a fixed order. Each figure's SVG ids are
prefixed with the figure's name, so that no two elements of the page share an id.
"""

from __future__ import annotations

from collections.abc import Sequence

import jinja2
from markupsafe import Markup

import hpcxfer
from hpcxfer.collect.figures import FigureData
from hpcxfer.collect.plotting import draw, inline_svg
from hpcxfer.collect.provenance import Provenance
from hpcxfer.collect.views import View

#: The report's views in order: the paper's first, the raw cells last.
PAPER_FIRST = ("table2", "compare", "paired", "table1", "paper")
#: The views shown collapsed (<details>): raw cells, and the state of unfinished tasks.
COLLAPSED = ("cells", "incomplete")
#: A paper view with more rows than this is collapsed too, its title still in sight.
LONG = 40


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("hpcxfer.collect", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=False, keep_trailing_newline=True)


def ordered(views: Sequence[View]) -> list[View]:
    """The paper's views first (in PAPER_FIRST's order), then any other, then the collapsed ones."""
    rank = {name: i for i, name in enumerate(PAPER_FIRST)}
    late = {name: i for i, name in enumerate(COLLAPSED)}
    return sorted(views, key=lambda v: (v.name in late, late.get(v.name, 0), rank.get(v.name, len(rank))))


def _figure(data: FigureData) -> dict:
    return {"name": data.name, "title": data.caption, "svg": Markup(inline_svg(draw(data), f"{data.name}-"))}


def report_html(study: str, study_dir: str, dataset: str | None, summary: Sequence[str], views: Sequence[View],
                figures: Sequence[FigureData], skipped_figures: Sequence[str] = (), *,
                provenance: Provenance | None = None, curves: FigureData | None = None) -> str:
    shown = [{"view": v, "collapsed": v.name in COLLAPSED or len(v.rows) > LONG} for v in ordered(views)]
    return _environment().get_template("report.html.j2").render(
        study=study, study_dir=study_dir, dataset=dataset, version=hpcxfer.__version__, summary=summary,
        views=[v for v in shown if v["view"].name not in COLLAPSED],
        late=[v for v in shown if v["view"].name in COLLAPSED], figures=[_figure(f) for f in figures], skipped_figures=skipped_figures,
        curves=_figure(curves) if curves else None, provenance=provenance)


def build_report(collected, jobs: int | None = None, ref: str | None = None) -> str:
    """The report of a collected study (collect/build.py `collect`): every view `all` shows
    (the paired view among them), Figs. 1-6, the delta figure, a searched study's rung
    figure, learning curves and provenance. `ref`: the paired view's and delta figure's reference protocol (default
    common, else scratch); one the study does not run is a ConfigError (`--ref`)."""
    from hpcxfer.collect.build import ALL, build_views
    from hpcxfer.collect.figures import curve_figure, rung_figure, study_design, study_figures
    from hpcxfer.collect.metrics import merge_metrics
    from hpcxfer.collect.paired import finetune_rows
    from hpcxfer.collect.provenance import provenance

    records = collected.records
    views = build_views(collected, ALL, explicit=False, jobs=jobs, ref=ref)
    figures, left_out = study_figures(collected, ref)
    rungs = rung_figure(collected.records.paths)  # a searched study's candidates by epoch
    if rungs:
        figures.append(rungs)
    curves = curve_figure(merge_metrics(records, jobs=jobs))
    if curves:
        curves.design = study_design(finetune_rows(records))
    paths = records.paths
    return report_html(paths.name, str(paths.dir), collected.dataset, collected.summary(), views, figures,
                       left_out, provenance=provenance(records), curves=curves)
