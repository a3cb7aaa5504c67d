"""What `hpcxfer collect` and `hpcxfer report` compute: records -> cells -> named views."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcxfer.collect import paper, reports
from hpcxfer.collect.aggregate import DEFAULT_BY, summarize
from hpcxfer.collect.metrics import merge_metrics
from hpcxfer.collect.paired import paired_view
from hpcxfer.collect.read import StudyRecords, read_study
from hpcxfer.collect.tune import tune_view
from hpcxfer.collect.views import View
from hpcxfer.errors import ConfigError
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Held

#: Named views; `curves` is the only one that reads every metrics record.
VIEWS = ("cells", "table1", "table2", "compare", "paired", "paper", "incomplete", "curves", "tune")
#: What `--view all` and the HTML report show (paper only for an ImageNet study, and
#: incomplete only while some task has no result).
ALL = ("cells", "table1", "table2", "compare", "paired", "paper", "incomplete")


@dataclass
class Collected:
    records: StudyRecords
    by: tuple[str, ...]
    cells: list[dict]  # grouped by `by`
    protocol_cells: list[dict]  # grouped by protocol and size: what the paper's views need

    @property
    def dataset(self) -> str | None:
        datasets = self.records.datasets
        return datasets[0] if len(datasets) == 1 else None

    def summary(self) -> list[str]:
        return reports.study_summary(self.records)


def collect(paths: StudyPaths, by: Sequence[str] = DEFAULT_BY, held: Mapping[str, Held] | None = None) -> Collected:
    records = read_study(paths, held)
    rows, missing = records.rows, records.missing
    cells = summarize(rows, missing, by)
    protocol_cells = cells if tuple(by) == DEFAULT_BY else summarize(rows, missing)
    return Collected(records, tuple(by), cells, protocol_cells)


def parse_views(names: Sequence[str] | None) -> list[str]:
    """`--view` values (repeatable, comma-separated, `all`) -> view names in order."""
    out: list[str] = []
    for text in names or ["cells"]:
        for name in (n.strip() for n in text.split(",")):
            if name == "all":
                out += [v for v in ALL if v not in out]
            elif name in VIEWS:
                out += [] if name in out else [name]
            elif name:
                raise ConfigError(None, "--view", f"unknown view {name!r}", f"choose from {', '.join(VIEWS)} or all")
    return out or ["cells"]


def build_views(c: Collected, names: Sequence[str], *, explicit: bool = True, jobs: int | None = None,
                ref: str | None = None) -> list[View]:
    """The named views. With `explicit` False (`all`, the report) the paper view is left out
    of a study that is not ImageNet's, and the incomplete view of a finished study. `ref`:
    the paired view's reference protocol (collect/paired.py; default common, else scratch)."""
    dataset, cells = c.dataset, c.protocol_cells
    make = {
        "cells": lambda: reports.cells_view(c.cells, c.by, c.records.paths.name),
        "table1": lambda: reports.table1(cells, dataset),
        "table2": lambda: reports.table2(cells, dataset, c.records.rows),
        "paired": lambda: paired_view(c.records, ref),
        "compare": lambda: reports.compare(cells, dataset, c.records.rows),
        "paper": lambda: reports.paper_numbers(cells, dataset),
        "incomplete": lambda: reports.incomplete(c.records),
        "curves": lambda: reports.curves_view(
            [row for curve in merge_metrics(c.records, c.by, jobs=jobs) for row in curve.rows()], c.by),
        "tune": lambda: tune_view(c.records.paths),
    }
    views = []
    for name in names:
        if not explicit and name == "paper" and not paper.applies(dataset):
            continue
        if not explicit and name == "incomplete" and not c.records.incomplete:
            continue
        views.append(make[name]())
    return views
