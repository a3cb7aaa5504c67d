"""What a Gadi packed job runs: `python -m hpcxfer.backends.pack STUDY LIST --slots K
--walltime-s S`. One worker per slot (GPU) at a time, `CUDA_VISIBLE_DEVICES` set to the
slot, taking the next unfinished task of the job's own list whose pre-training is done,
until the list or the walltime runs out.

The list is this job's alone (submit gives each task to one job), so two packed jobs
never run the same task; should a task be run by someone else all the same, its lock
(running.json) makes the worker exit 73 at once, which is not a failure here. At walltime PBS sends SIGTERM to every process of
the job; the workers checkpoint within kill_delay and the next `hpcxfer submit` resumes
them. Exit status: 0 all done, 1 a task failed, 75 stopped with tasks left.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcxfer.backends.base import worker_command
from hpcxfer.errors import HpcxferError
from hpcxfer.layout import StudyPaths
from hpcxfer.study import is_done, load_units
from hpcxfer.worker import EXIT_BUSY, EXIT_RESUME

log = logging.getLogger("hpcxfer.pack")

POLL_S = 0.2


class Pack:
    def __init__(self, paths: StudyPaths, task_ids: list[str], slots: int, deadline: float, min_left_s: float):
        self.paths = paths
        self.todo = load_units(paths, task_ids)  # tasks alone and protocol groups
        self.task_ids = [u.id for u in self.todo]
        self.members = {u.id: u.members for u in self.todo}
        self.slots: dict[int, tuple[str, subprocess.Popen] | None] = {i: None for i in range(slots)}
        self.deadline, self.min_left_s = deadline, min_left_s
        self.failed: list[str] = []
        self.stopping = False
        self.done: set[str] = set()  # tasks with a valid result

    def _stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stopping = True

    def _done(self, unit_id: str) -> bool:
        # asked every poll for every waiting unit's dependencies: read a result once
        for m in self.members.get(unit_id, (unit_id,)):
            if m not in self.done:
                if not is_done(self.paths.task(m)):
                    return False
                self.done.add(m)
        return True

    def _next(self):
        """The next task ready to start: its dependencies done; None if none is ready now."""
        running = {s[0] for s in self.slots.values() if s}
        for task in self.todo:
            if task.id in running:
                continue
            if all(self._done(d) for d in task.depends_on):
                return task
        return None

    def _launch(self, slot: int, task) -> None:
        self.todo.remove(task)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(slot)}
        log.info("slot %d (CUDA_VISIBLE_DEVICES=%d): %s", slot, slot, task.id)
        proc = subprocess.Popen(worker_command(self.paths, task.id), env=env, stdin=subprocess.DEVNULL)
        self.slots[slot] = (task.id, proc)

    def _reap(self) -> None:
        for slot, held in self.slots.items():
            if held is None or held[1].poll() is None:
                continue
            task_id, code = held[0], held[1].returncode
            self.slots[slot] = None
            log.info("slot %d: %s exited %d", slot, task_id, code)
            if code not in (0, EXIT_RESUME, EXIT_BUSY) and not self.stopping:
                self.failed.append(task_id)

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, self._stop)
        self.todo = [t for t in self.todo if not self._done(t.id)]
        while True:
            self._reap()
            busy = [s for s in self.slots.values() if s]
            if self.stopping:
                for task_id, proc in busy:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)  # PBS signals them too; harmless twice
                for _, proc in busy:
                    proc.wait()
                break
            out_of_time = self.deadline - time.time() < self.min_left_s
            if not out_of_time:
                for slot in [i for i, s in self.slots.items() if s is None]:
                    task = self._next()
                    if task is None:
                        break
                    self._launch(slot, task)
            busy = [s for s in self.slots.values() if s]
            if not busy and (out_of_time or self._next() is None):
                break
            time.sleep(POLL_S)
        self._reap()
        left = [t for t in self.task_ids if not self._done(t) and t not in self.failed]
        log.info("pack finished: %d failed, %d left for the next submit", len(self.failed), len(left))
        if self.failed:
            return 1
        return EXIT_RESUME if left else 0


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
        pack = Pack(paths, task_ids, args.slots, time.time() + args.walltime_s, args.min_left_s)
    except HpcxferError as e:  # a list naming what the study does not hold
        log.error("%s", e)
        return 2
    return pack.run()


if __name__ == "__main__":
    sys.exit(main())
