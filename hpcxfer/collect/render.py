"""Views -> a rich table (or its plain text), CSV, Markdown or JSON.

JSON has one shape, however many views: {"views": {name: {"title", "fields", "rows",
"notes"}}, "summary": {"notes", "skipped"}}. CSV holds one view, with a header of its
declared fields even when it has no row. `format_of` infers the format from --out's
extension.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from hpcxfer.collect.views import View
from hpcxfer.errors import ConfigError

FORMATS = ("table", "csv", "markdown", "json")
#: --out's extension -> the format written when --format is not given.
EXTENSIONS = {".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".json": "json", ".txt": "table"}


def format_of(out: str | None, given: str | None) -> str:
    """--format if given, else the one --out's extension names, else a table."""
    if given:
        return given
    if out is None:
        return "table"
    ext = out[out.rfind("."):].lower() if "." in out.rsplit("/", 1)[-1] else ""
    if ext not in EXTENSIONS:
        raise ConfigError(None, "--out", f"cannot tell a format from {out!r}",
                          f"end it in {', '.join(EXTENSIONS)}, or give --format")
    return EXTENSIONS[ext]


def rich_table(view: View) -> Table | Text:
    """The view as a rich table; a view without a row as one line (its title and notes)."""
    # Cells hold what users wrote (experiment names, a failed task's error): text, not markup.
    if not view.rows:
        return Text(view.empty_line())
    table = Table(title=Text(view.title), caption=Text("\n".join(view.notes)) if view.notes else None,
                  caption_justify="left")
    for c in view.columns:
        table.add_column(Text(c.header), justify="right" if c.numeric else "left")
    for row in view.cells():
        table.add_row(*map(Text, row))
    return table


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN (a diverged loss) is not JSON
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_csv(views: Sequence[View]) -> str:
    if len(views) != 1:
        raise ConfigError(None, "--format", "csv holds one view", "name one with --view, or use json or markdown")
    rows = views[0].rows
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=views[0].field_names(), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(view: View) -> str:
    if not view.rows:
        return f"### {view.title}\n\n_{_md_escape('; '.join(view.notes) or 'nothing to show')}_\n"
    lines = [f"### {view.title}", "", "| " + " | ".join(_md_escape(c.header) for c in view.columns) + " |",
             "|" + "".join("---:|" if c.numeric else "---|" for c in view.columns)]
    lines += ["| " + " | ".join(_md_escape(x) for x in row) + " |" for row in view.cells()]
    lines += [""] + [f"_{_md_escape(n)}_  " for n in view.notes]
    return "\n".join(lines) + "\n"


def to_markdown(views: Sequence[View]) -> str:
    return "\n".join(markdown(v) for v in views)


def to_json(views: Sequence[View], summary: dict | None = None) -> str:
    data = {"views": {v.name: _plain(v.to_json()) for v in views}, "summary": _plain(summary or {})}
    return json.dumps(data, indent=2) + "\n"


def to_text(views: Sequence[View]) -> str:
    """The terminal's tables as plain text (no colour, never cropped): what a .txt gets."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=10_000, color_system=None, force_terminal=False, highlight=False)
    for view in views:
        console.print(rich_table(view))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
