"""The vocabulary every layer shares: a worker's exit statuses and a task's states.

Backends translate their scheduler's own codes into these at their edge (a SLURM element's
exit, a PBS subjob's letter); nothing above a backend compares a scheduler's words. This
module imports nothing of hpcxfer, so a backend reads it without importing torch.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Exit(IntEnum):
    """What a worker (`hpcxfer run-task`) exits with; the README's "Exit statuses"."""

    DONE = 0  #: result.json is written (every member's, for a group)
    FAILED = 1  #: a real error: failed.json says why; do not retry blindly
    USAGE = 2  #: bad input: nothing was trained
    BUSY = 73  #: another live worker holds the unit: nothing was touched
    RESUME = 75  #: checkpointed on request (a signal, walltime): resume me (EX_TEMPFAIL)


class State(StrEnum):
    """A task's state, as `status` and `collect` name it."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
