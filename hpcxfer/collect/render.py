"""Summaries -> rich table, CSV, Markdown or JSON."""

from __future__ import annotations

import csv
import io
import json

from rich.table import Table

FORMATS = ("table", "csv", "markdown", "json")
COLUMNS = ("examples_per_class", "protocol", "n", "missing", "val_acc_mean", "val_acc_std",
           "val_loss_mean", "val_loss_std", "train_loss_mean", "train_acc_mean")


def _pm(mean, std, scale=1.0, digits=1) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _display_rows(summaries: list[dict]) -> list[list[str]]:
    return [[str(s["examples_per_class"]), s["protocol"], str(s["n"]), str(s["missing"]),
             _pm(s["val_acc_mean"], s["val_acc_std"], 100), _pm(s["val_loss_mean"], s["val_loss_std"], 1, 3)]
            for s in summaries]


HEADERS = ["per class", "protocol", "n", "missing", "val acc %", "val loss"]


def rich_table(summaries: list[dict], title: str) -> Table:
    table = Table(title=title)
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "protocol" else "right")
    for row in _display_rows(summaries):
        table.add_row(*row)
    return table


def to_csv(summaries: list[dict]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for s in summaries for k in s)) or list(COLUMNS)
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(summaries)
    return buf.getvalue()


def to_markdown(summaries: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in _display_rows(summaries)]
    return "\n".join(lines) + "\n"


def to_json(summaries: list[dict]) -> str:
    return json.dumps(summaries, indent=2) + "\n"
