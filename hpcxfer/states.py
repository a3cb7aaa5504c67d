"""The vocabulary every layer shares: a worker's exit statuses and a task's states.

Backends translate their scheduler's own codes into these at their edge (a SLURM element's
exit, a PBS subjob's letter); nothing above a backend compares a scheduler's words. This
module imports nothing of hpcxfer, so a backend reads it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    PRUNED = "pruned"  #: a search stopped it at a rung (pruned.json); not failed, not done


class Hold(StrEnum):
    """What a backend says of a task it holds or last ran, in every backend's words."""

    QUEUED = "queued"  #: waiting to start (or requeued)
    RUNNING = "running"
    FAILED = "failed"  #: the scheduler ended it: walltime, memory, a node, a real failure
    STOPPED = "stopped"  #: ended without failing: cancelled, or checkpointed for the next submit


@dataclass(frozen=True)
class Held:
    """One task as a backend holds it (`Backend.view`): its state, the job element that
    runs it, the scheduler's own word for that state (a SLURM name, a PBS letter), a line for
    people and the log to read."""

    state: Hold
    job: str = ""
    scheduler_state: str = ""
    detail: str = ""
    log: str | None = None

    @property
    def active(self) -> bool:
        """Whether the job will still run the task (queued or running)."""
        return self.state in (Hold.QUEUED, Hold.RUNNING)
