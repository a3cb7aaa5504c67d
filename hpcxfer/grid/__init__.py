"""grid.yaml -> validated Grid -> list of Tasks. Expansion is pure: no I/O."""

from hpcxfer.grid.expand import expand
from hpcxfer.grid.load import load_grid
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.task import Task

__all__ = ["Grid", "Task", "expand", "load_grid"]
