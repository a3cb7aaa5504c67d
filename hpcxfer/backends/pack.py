"""What a Gadi packed job runs: `python -m hpcxfer.backends.pack STUDY LIST --slots K
--walltime-s S`. The task pool (hpcxfer/backends/pool.py, its rules in docs/design.md §8)
with one worker per slot (GPU) at a time, `CUDA_VISIBLE_DEVICES` set to the slot, taking
the next unfinished unit of the job's own list whose pre-training is done, until the list
or the walltime runs out.

The list is this job's alone (submit gives each task to one job), so two packed jobs
never run the same task; should a task be run by someone else all the same, its lock
(running.json) makes the worker exit 73 at once, which is not a failure. At walltime PBS
sends SIGTERM to every process of the job; the workers checkpoint within kill_delay and the
next `hpcxfer submit` resumes them. Exit status: 0 all done, 1 a unit failed or was
skipped, 75 stopped with units left.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from hpcxfer.backends.base import worker_command
from hpcxfer.backends.pool import OUTCOMES, Launch, Pool
from hpcxfer.errors import HpcxferError
from hpcxfer.grid.groups import Unit
from hpcxfer.layout import StudyPaths

log = logging.getLogger("hpcxfer.pack")

POLL_S = 0.2


def launcher(paths: StudyPaths) -> Launch:
    """How a packed job starts a unit's worker: on GPU `slot` alone, in the job's session
    (PBS signals every process of the job), its output in the job's log."""

    def launch(slot: int, unit: Unit) -> subprocess.Popen:
        log.info("slot %d (CUDA_VISIBLE_DEVICES=%d): %s", slot, slot, unit.id)
        return subprocess.Popen(worker_command(paths, unit.id), env={**os.environ, "CUDA_VISIBLE_DEVICES": str(slot)},
                                stdin=subprocess.DEVNULL)

    return launch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcxfer.backends.pack")
    p.add_argument("study_dir")
    p.add_argument("list_file")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--walltime-s", type=float, required=True)
    p.add_argument("--min-left-s", type=float, default=120,
                   help="start no task with less walltime than this left")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = StudyPaths(Path(args.study_dir))
    task_ids = Path(args.list_file).read_text().split()
    try:
        pool = Pool(paths, task_ids, args.slots, launcher(paths), deadline=time.time() + args.walltime_s,
                    min_left_s=args.min_left_s, poll_s=POLL_S)
    except HpcxferError as e:  # a list naming what the study does not hold
        log.error("%s", e)
        return 2
    outcome = pool.run()
    counts = pool.counts()
    log.info("pack finished: %s", ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o)) or "nothing to do")
    for unit_id, o in outcome.items():
        if o in ("failed", "skipped"):
            log.info("%s: %s", unit_id, o)
    return pool.exit_status()


if __name__ == "__main__":
    sys.exit(main())
