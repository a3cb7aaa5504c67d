"""What the optional `train` extra brings, and one clear line where it is missing.

The base install plans, submits, follows and collects a study; running a task (and
checking a data set before a real submit) needs torch and torchvision:
`pip install 'hpcxfer[train]'` (README, "Installing on a cluster").
"""

from __future__ import annotations

import importlib.util
import sys

from hpcxfer.errors import HpcxferError

#: Modules a task cannot run without (found without importing them: torch takes seconds).
TRAIN_MODULES = ("torch", "torchvision")


class MissingExtra(HpcxferError):
    """A command that needs the `train` extra, in an installation without it."""


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken installation: as good as none
        return True


def missing_train() -> list[str]:
    return [m for m in TRAIN_MODULES if _absent(m)]


def require_train(what: str) -> None:
    """MissingExtra, in one line, unless torch and torchvision can be imported."""
    missing = missing_train()
    if missing:
        raise MissingExtra(f"{what} needs {' and '.join(missing)}, which this Python ({sys.executable}) lacks: "
                           "pip install 'hpcxfer[train]'")
