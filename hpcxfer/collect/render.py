"""Views -> a rich table, CSV, Markdown or JSON.

JSON of one view is its list of rows (the cells view's rows are what `collect --format json`
has always printed); JSON of several views is an object keyed by view name.
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


def rich_table(view: View) -> Table:
    # Cells hold what users wrote (experiment names, a failed task's error): text, not markup.
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
    keys = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(view: View) -> str:
    lines = [f"### {view.title}", "", "| " + " | ".join(_md_escape(c.header) for c in view.columns) + " |",
             "|" + "".join("---:|" if c.numeric else "---|" for c in view.columns)]
    lines += ["| " + " | ".join(_md_escape(x) for x in row) + " |" for row in view.cells()]
    lines += [""] + [f"_{_md_escape(n)}_  " for n in view.notes]
    return "\n".join(lines) + "\n"


def to_markdown(views: Sequence[View]) -> str:
    return "\n".join(markdown(v) for v in views)


def to_json(views: Sequence[View], summary: dict | None = None) -> str:
    if len(views) == 1:
        data = _plain(views[0].rows)
    else:
        data = {v.name: _plain(v.to_json()) for v in views}
        if summary is not None:
            data["summary"] = _plain(summary)
    return json.dumps(data, indent=2) + "\n"
