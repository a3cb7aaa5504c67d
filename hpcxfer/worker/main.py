"""Entry of one task process: the task's lock, logging, and an exit status that says what
happened. Exit statuses (documented in the README):

    0   done: result.json is written
    1   failed for a real error: failed.json says why; do not retry blindly
    2   bad input (missing study, unknown task, unusable checkpoint): nothing was trained
    73  another live worker holds the task (its running.json): this one exits at once,
        one line on stderr naming the holder, and touches none of the task's files
    75  interrupted on request (SIGUSR1, SIGUSR2 or SIGTERM): checkpointed at the next
        step, resume me (EX_TEMPFAIL)

The lock is running.json, created with link(2) (hpcxfer.locks) before anything of the task
is written, holding this process's identity (host, pid, start time) and job id; its mtime
is refreshed every locks.HEARTBEAT_S seconds and it is removed at exit. One left by a dead
worker is taken over: at once on the same host, after locks.STALE_S without a heartbeat
from another host.
"""

from __future__ import annotations

from hpcxfer.worker import unit


def run_task(study_dir: str, task: str) -> int:
    """Run one task of a study (its index or id) to completion, or to a checkpoint on
    request; a protocol group's id runs the group. Both are units (hpcxfer/worker/unit.py)."""
    return int(unit.run(study_dir, task))
