"""grid.yaml -> validated Grid -> list of Tasks. Expansion is pure: no I/O.

The names below load on first use, so that a worker, which needs only `grid.task`, does
not import pydantic and the schema on its way to the first training step.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Grid": "hpcxfer.grid.schema", "Task": "hpcxfer.grid.task",
            "expand": "hpcxfer.grid.expansion", "load_grid": "hpcxfer.grid.load"}

__all__ = ["Grid", "Task", "expand", "load_grid"]  # = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hpcxfer.grid' has no attribute {name!r}")
