"""The embedded backend: each task as its own `hpcxfer run-task` process on this machine.

A runner process takes the submitted tasks in index order, starts each once its
pre-training is done, keeps `max_parallel` running, and re-runs a task that exits asking
to be resumed. Without --wait the runner detaches and `submit` returns at once; its run
file (backends/local/runs/<run>.json) is how `status`, `cancel` and the next `submit`
know which tasks it still holds.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from hpcxfer.backends.base import Submission, worker_command
from hpcxfer.fileio import atomic_write_json, read_json
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.study import pid_alive, load_tasks
from hpcxfer.worker import EXIT_RESUME

log = logging.getLogger(__name__)

POLL_S = 0.05


def _runs_dir(paths: StudyPaths) -> Path:
    return paths.backend_dir("local") / "runs"


def parallelism(grid: Grid) -> tuple[int, int]:
    """(tasks at once, torch threads per task) for this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parallel = grid.local.max_parallel or cores
    threads = grid.runtime.threads or max(1, cores // parallel)
    return parallel, threads


def live_runs(paths: StudyPaths) -> list[dict]:
    """Run files whose runner process is alive on this host."""
    out = []
    for f in sorted(_runs_dir(paths).glob("*.json")):
        try:
            run = read_json(f)
        except (OSError, ValueError):
            continue
        if run.get("host") == socket.gethostname() and pid_alive(int(run.get("pid", -1))):
            out.append(run)
    return out


class LocalBackend:
    name = "local"

    def submit(self, paths: StudyPaths, grid: Grid, tasks: list[Task], *, dry_run: bool = False,
               wait: bool = False, on_change: Callable[[dict], None] | None = None) -> Submission:
        parallel, threads = parallelism(grid)
        sub = Submission(backend=self.name, tasks=[t.task_id for t in tasks])
        sub.commands = [shlex.join(worker_command(paths, t.task_id)) for t in tasks]  # safe to paste
        if dry_run or not tasks:
            return sub
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_file = _runs_dir(paths) / f"{run_id}.json"
        record = {"run_id": run_id, "host": socket.gethostname(), "tasks": sub.tasks,
                  "max_parallel": parallel, "threads": threads, "started": time.time()}
        if wait:
            atomic_write_json(run_file, {**record, "pid": os.getpid()})
            try:
                Runner(paths, sub.tasks, parallel, threads).run(on_change)
            finally:
                run_file.unlink(missing_ok=True)
            sub.job_ids = [f"local:{os.getpid()}"]
            return sub
        # Detached: the runner writes its own pid into the run file before returning here,
        # so the next submit never sees these tasks unheld.
        atomic_write_json(run_file, {**record, "pid": -1})
        log_path = paths.backend_dir("local") / f"{run_id}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "hpcxfer.backends.local", str(paths.dir), str(run_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        atomic_write_json(run_file, {**record, "pid": proc.pid})
        sub.job_ids = [f"local:{proc.pid}"]
        return sub

    def held(self, paths: StudyPaths) -> set[str]:
        return {t for run in live_runs(paths) for t in run["tasks"]}

    def cancel(self, paths: StudyPaths) -> list[str]:
        cancelled = []
        for run in live_runs(paths):
            try:
                os.kill(int(run["pid"]), signal.SIGTERM)
                cancelled.append(f"local:{run['pid']}")
            except ProcessLookupError:
                pass
        return cancelled


class Runner:
    """Runs task processes in dependency order, `parallel` at once."""

    def __init__(self, paths: StudyPaths, task_ids: list[str], parallel: int, threads: int):
        self.paths = paths
        wanted = set(task_ids)
        self.tasks = {t.task_id: t for t in load_tasks(paths) if t.task_id in wanted}
        self.todo = [t for t in task_ids if t in self.tasks]
        self.parallel = max(1, parallel)
        self.threads = threads
        self.procs: dict[str, subprocess.Popen] = {}
        self.outcome: dict[str, str] = {}
        self.stopping = False

    def _stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stopping = True

    def _counts(self) -> dict:
        counts = {"total": len(self.tasks), "running": len(self.procs)}
        for o in self.outcome.values():
            counts[o] = counts.get(o, 0) + 1
        return counts

    def _launch(self, task_id: str) -> None:
        tp = self.paths.task(task_id)
        tp.dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HPCXFER_THREADS": str(self.threads), "HPCXFER_JOB_ID": f"local:{os.getpid()}",
               "OMP_NUM_THREADS": str(self.threads)}
        with open(tp.log, "ab") as out:
            self.procs[task_id] = subprocess.Popen(
                worker_command(self.paths, task_id), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _reap(self) -> bool:
        changed = False
        for task_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[task_id]
            changed = True
            if code == 0:
                self.outcome[task_id] = "done"
            elif code == EXIT_RESUME and not self.stopping:
                self.todo.insert(0, task_id)  # checkpointed on request: carry on
            else:
                self.outcome[task_id] = "interrupted" if code == EXIT_RESUME else "failed"
        return changed

    def _ready(self, task_id: str) -> bool | None:
        """True: start it; False: wait; None: never (a dependency cannot finish)."""
        for dep in self.tasks[task_id].depends_on:
            if self.paths.task(dep).result.is_file():
                continue
            if dep in self.procs or dep in self.todo:
                return False
            if self.outcome.get(dep) in ("failed", "skipped", "interrupted"):
                return None
            if any(dep in run["tasks"] for run in live_runs(self.paths)):
                return False  # another runner of this study holds it
            return None
        return True

    def _start_ready(self) -> bool:
        changed = False
        for task_id in list(self.todo):
            if len(self.procs) >= self.parallel:
                break
            ready = self._ready(task_id)
            if ready is None:
                self.todo.remove(task_id)
                self.outcome[task_id] = "skipped"
                changed = True
                log.warning("%s skipped: a task it depends on did not finish", task_id)
            elif ready:
                self.todo.remove(task_id)
                self._launch(task_id)
                changed = True
        return changed

    def run(self, on_change: Callable[[dict], None] | None = None) -> dict[str, str]:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while (self.todo and not self.stopping) or self.procs:
                changed = self._reap()
                if self.stopping:
                    for proc in self.procs.values():
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGTERM)  # the worker checkpoints and exits
                    self.todo.clear()
                else:
                    changed |= self._start_ready()
                if changed and on_change:
                    on_change(self._counts())
                time.sleep(POLL_S)
            if on_change:
                on_change(self._counts())
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return self.outcome


def _main(argv: list[str]) -> int:
    """The detached runner: python -m hpcxfer.backends.local STUDY_DIR RUN_FILE."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths, run_file = StudyPaths(Path(argv[0])), Path(argv[1])
    run = read_json(run_file)
    atomic_write_json(run_file, {**run, "pid": os.getpid()})
    try:
        outcome = Runner(paths, run["tasks"], run["max_parallel"], run["threads"]).run()
    finally:
        run_file.unlink(missing_ok=True)
    failed = sorted(t for t, o in outcome.items() if o != "done")
    log.info("runner finished: %d done, %d not done %s", len(outcome) - len(failed), len(failed), failed)
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
