"""`hpcxfer report`: one self-contained HTML file (tables, notes, figures as inline SVG) a
researcher can mail to a colleague. Rendered from a Jinja template with autoescaping;
only matplotlib's own SVG is marked safe."""

from __future__ import annotations

from collections.abc import Sequence

import jinja2
from markupsafe import Markup

import hpcxfer
from hpcxfer.collect.figures import FigureData, draw, inline_svg
from hpcxfer.collect.views import View


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("hpcxfer.collect", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=False, keep_trailing_newline=True)


def report_html(study: str, study_dir: str, dataset: str | None, summary: Sequence[str], views: Sequence[View],
                figures: Sequence[FigureData], skipped_figures: Sequence[str] = ()) -> str:
    figs = [{"name": f.name, "title": f.spec.title, "svg": Markup(inline_svg(draw(f)))} for f in figures]
    return _environment().get_template("report.html.j2").render(
        study=study, study_dir=study_dir, dataset=dataset, version=hpcxfer.__version__, summary=summary,
        views=views, figures=figs, skipped_figures=skipped_figures)
