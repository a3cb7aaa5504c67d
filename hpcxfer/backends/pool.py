"""The one task pool: runs units (a task alone, or a protocol group: hpcxfer/grid/groups.py)
as `hpcxfer run-task` processes, a few at a time, in dependency order. The local backend's
runner (hpcxfer/backends/local.py) and Gadi's packed jobs (hpcxfer/backends/pack.py) are
this pool; only how a worker is started differs (its environment, where its output goes).

The rules, one set for both (docs/design.md §8):

- A unit whose members all have a valid result is done and is not started.
- A unit starts once every task it depends on has a valid result. A dependency that is
  still to run in this pool, or that a live worker or another local runner holds, is
  waited for.
- A worker's exit status: 0 done; 73 (Exit.BUSY) another process holds the unit: not a
  failure, not run again here (its dependents wait while that process runs it); 75
  (Exit.RESUME) it checkpointed and stopped on a signal or at walltime: interrupted, not a
  failure, left to be resumed by the next `submit`, not started again by this pool; any other
  status a failure. A worker killed by a signal is interrupted while the pool itself is
  stopping (the scheduler's SIGKILL after its grace period) and failed otherwise (the
  out-of-memory killer).
- A unit whose dependency failed, was skipped, or is neither done, nor to run here, nor
  running anywhere is skipped: reported (logged, counted), never started.
- A unit whose dependency was interrupted is left for the next `submit`, as is every unit
  not started when the pool stops: on SIGTERM, SIGINT or SIGUSR1 it starts nothing more,
  passes SIGTERM on to its workers (which checkpoint and exit 75) and waits for them; at
  its deadline (a packed job's walltime less the time a unit needs to be worth starting)
  it starts nothing more and waits for what runs.
- The pool's exit status (`exit_status`): 1 if a unit failed or was skipped, else 75 if a
  unit is not done, else 0.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable

from hpcxfer.grid.groups import Unit
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Exit
from hpcxfer.study import is_done, load_units, task_running

log = logging.getLogger(__name__)

#: Signals that stop a pool: a cancel, Ctrl-C, a scheduler's warning.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: What a unit can end as; "running" is counted apart.
OUTCOMES = ("done", "failed", "skipped", "interrupted", "elsewhere", "left")

#: Starts the worker of `unit` in slot `slot` (0..slots-1).
Launch = Callable[[int, Unit], subprocess.Popen]


class Pool:
    """Runs `unit_ids` of the study `slots` at a time (see the module's rules).

    `launch` starts one worker; `others_hold(task_id)` says whether another runner of the
    study holds a task (the local backend's run files); `deadline` (time.time()) with
    `min_left_s`: start nothing once less than `min_left_s` seconds are left."""

    def __init__(self, paths: StudyPaths, unit_ids: list[str], slots: int, launch: Launch, *,
                 others_hold: Callable[[str], bool] | None = None, deadline: float | None = None,
                 min_left_s: float = 0.0, poll_s: float = 0.05):
        self.paths = paths
        self.units = {u.id: u for u in load_units(paths, unit_ids)}
        self.todo = [u for u in dict.fromkeys(unit_ids) if u in self.units]
        self.unit_of = {m: u.id for u in self.units.values() for m in u.members}
        self.slots = max(1, slots)
        self.launch = launch
        self.others_hold = others_hold or (lambda task_id: False)
        self.deadline, self.min_left_s, self.poll_s = deadline, min_left_s, poll_s
        self.running: dict[int, tuple[str, subprocess.Popen]] = {}
        self.outcome: dict[str, str] = {}
        self.stopping = False
        self.signalled: set[int] = set()  # workers the pool passed its stop on to
        self.done: set[str] = set()  # tasks with a valid result: read once, not every poll

    # ------------------------------------------------------------ state
    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True

    def task_done(self, task_id: str) -> bool:
        if task_id not in self.done and is_done(self.paths.task(task_id)):
            self.done.add(task_id)
        return task_id in self.done

    def unit_done(self, unit_id: str) -> bool:
        return all(self.task_done(m) for m in self.units[unit_id].members)

    def counts(self) -> dict:
        counts = {"total": len(self.units), "running": len(self.running)}
        for o in self.outcome.values():
            counts[o] = counts.get(o, 0) + 1
        return counts

    def out_of_time(self) -> bool:
        return self.deadline is not None and self.deadline - time.time() < self.min_left_s

    def exit_status(self) -> int:
        if any(o in ("failed", "skipped") for o in self.outcome.values()):
            return Exit.FAILED
        return Exit.RESUME if not all(self.unit_done(u) for u in self.units) else Exit.DONE

    # ------------------------------------------------------------ the rules
    def _end(self, code: int) -> str:
        """What a worker's exit status means (the module's rules)."""
        if code == 0:
            return "done"
        if code == Exit.BUSY:
            return "elsewhere"  # another process holds it (its log says which)
        if code == Exit.RESUME or (code < 0 and self.stopping):
            return "interrupted"  # checkpointed, or killed after the grace period: resumes later
        return "failed"

    def _ready(self, unit: Unit) -> bool | str:
        """True: start it; False: wait; "skipped" or "left": it cannot start in this pool."""
        for dep in unit.depends_on:
            if self.task_done(dep):
                continue
            here = self.unit_of.get(dep)
            if here is not None and (here in self.todo or any(here == u for u, _ in self.running.values())):
                return False
            ended = self.outcome.get(here) if here is not None else None
            if ended in ("failed", "skipped"):
                return "skipped"
            if ended in ("interrupted", "left"):
                return "left"
            if (here is None and self.others_hold(dep)) or task_running(self.paths.task(dep)):
                return False  # another runner (this pool's own run holds its units), job or host runs it now
            return "skipped"
        return True

    def _reap(self) -> bool:
        changed = False
        for slot, (unit_id, proc) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[slot]
            self.outcome[unit_id] = self._end(code)
            log.info("%s exited %d: %s", unit_id, code, self.outcome[unit_id])
            changed = True
        return changed

    def _start_ready(self) -> bool:
        changed = False
        for unit_id in list(self.todo):
            if len(self.running) >= self.slots:
                break
            ready = self._ready(self.units[unit_id])
            if ready is False:
                continue
            self.todo.remove(unit_id)
            changed = True
            if ready is True:
                slot = min(set(range(self.slots)) - set(self.running))
                self.running[slot] = (unit_id, self.launch(slot, self.units[unit_id]))
            else:
                self.outcome[unit_id] = ready
                why = "failed or cannot run" if ready == "skipped" else "was interrupted"
                log.warning("%s %s: a task it depends on %s", unit_id, ready, why)
        return changed

    def _leave_the_rest(self) -> bool:
        """Leave every unit not started for the next `submit`; whether there was one."""
        for unit_id in self.todo:
            self.outcome[unit_id] = "left"
        left = bool(self.todo)
        self.todo.clear()
        return left

    # ------------------------------------------------------------ the loop
    def run(self, on_change: Callable[[dict], None] | None = None) -> dict[str, str]:
        """Run to the end; unit id -> its outcome. `on_change(counts)` after each change."""
        previous = {s: signal.signal(s, self.stop) for s in STOP_SIGNALS}
        try:
            for unit_id in list(self.todo):
                if self.unit_done(unit_id):
                    self.todo.remove(unit_id)
                    self.outcome[unit_id] = "done"
            while True:
                changed = self._reap()
                if self.stopping:
                    for _, proc in self.running.values():
                        if proc.pid not in self.signalled and proc.poll() is None:
                            proc.send_signal(signal.SIGTERM)  # the worker checkpoints and exits 75
                            self.signalled.add(proc.pid)
                    changed |= self._leave_the_rest()
                elif self.out_of_time():
                    if self.todo:
                        log.info("less than %.0f s left: starting nothing more", self.min_left_s)
                    changed |= self._leave_the_rest()
                else:
                    changed |= self._start_ready()
                if changed and on_change:
                    on_change(self.counts())
                if not self.running and not self.todo:
                    break
                time.sleep(self.poll_s)
            if on_change:
                on_change(self.counts())
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return self.outcome
