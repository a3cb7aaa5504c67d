"""The embedded backend: each unit (a task alone, or a protocol group) as its own
`hpcxfer run-task` process on this machine.

A runner process is the task pool (hpcxfer/backends/pool.py, its rules in docs/design.md
§8): it takes the submitted units in index order, starts each once its pre-training is
done and keeps `max_parallel` running; a unit interrupted on a signal is left for the next
`submit`. Without --wait the runner detaches and `submit` returns at once; its run
file (backends/local/runs/<run>.json) is how `status`, `cancel` and the next `submit`
know which tasks it still holds.

A run file names its runner by `procs.ProcessId` (host, pid, start time): it is written
only once the runner has started, with the runner's real pid, before `submit` returns
(the detached runner reads its task list from a pipe that is closed only after that, so it
never runs unrecorded). A run file whose process is gone, or whose pid now belongs to
another process, holds nothing; one that is damaged is skipped with a warning, and so is
one without the seal of the study's secret key (hpcxfer/trust.py: a planted run file).
`cancel` signals only a live runner's own process group (a detached runner leads its
session).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from hpcxfer.backends.base import Submission, members, worker_command
from hpcxfer.backends.pool import Launch, Pool
from hpcxfer.errors import BackendError
from hpcxfer.fileio import atomic_write_json, read_json
from hpcxfer.grid.groups import Unit
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.procs import ProcessId, usable_cpus
from hpcxfer.states import Held, Hold
from hpcxfer.trust import TOKEN, seal, sealed, study_key

log = logging.getLogger(__name__)


def parallelism(grid: Grid) -> tuple[int, int]:
    """(tasks at once, torch threads per task) for this machine."""
    cores = usable_cpus()
    parallel = grid.local.max_parallel or cores
    threads = grid.runtime.threads or max(1, cores // parallel)
    return parallel, threads


_warned: set[str] = set()


def _damaged(path: Path, why: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s: skipped, %s", path, why)


def live_runs(paths: StudyPaths) -> list[dict]:
    """Run files whose runner process is alive on this host (its very process: same pid
    and start time) and that bear the study key's seal, each with its `ProcessId` under
    "process"."""
    out = []
    files = sorted(paths.backend("local").runs.glob("*.json"))
    key, no_key = study_key(paths.runner_key) if files else (None, "")
    for f in files:
        try:
            run = read_json(f)
        except (OSError, ValueError) as e:
            _damaged(f, f"unreadable ({type(e).__name__})")
            continue
        proc = ProcessId.from_dict(run)
        if proc is None:
            _damaged(f, "names no runner process (a pid above 1 and a host)")
            continue
        tasks = run.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            _damaged(f, "its task list is not a list of task ids")
            continue
        grouped = run.get("members") or {}
        if not (isinstance(grouped, dict) and all(isinstance(m, list) for m in grouped.values())):
            _damaged(f, "its group members are not lists of task ids")
            continue
        if not sealed(key, run):
            _damaged(f, "not written by this study's runner (no or wrong token"
                     + (f"; {no_key}" if no_key else "") + "): nothing is signalled or counted as queued")
            continue
        if proc.alive():
            # "tasks" of a run are its units; what it holds is every member of each
            out.append({**run, "process": proc,
                        "held": [m for u in tasks for m in grouped.get(u, [u]) if isinstance(m, str)]})
    return out


class LocalBackend:
    name = "local"
    in_process = True  # submit --wait runs the units here, in a pool of worker processes

    def submit(self, paths: StudyPaths, grid: Grid, units: list[Unit], *, dry_run: bool = False,
               wait: bool = False, on_change: Callable[[dict], None] | None = None,
               recorded: Callable[[], None] | None = None) -> Submission:
        """Start a runner for `units`. `recorded` is called once its run file is written
        (the tasks are held from then on): `submit --wait` lets go of the study lock there."""
        parallel, threads = parallelism(grid)
        sub = Submission(backend=self.name, tasks=[m for u in units for m in u.members], units=[u.id for u in units])
        sub.commands = [shlex.join(worker_command(paths, u.id)) for u in units]  # safe to paste
        if dry_run or not units:
            return sub
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_file = paths.backend(self.name).run_file(run_id)
        key, _ = study_key(paths.runner_key, create=True)

        def signed(rec: dict) -> dict:
            return {**rec, TOKEN: seal(key, rec)}

        record = {"run_id": run_id, "host": socket.gethostname(), "tasks": sub.units, "members": members(units),
                  "max_parallel": parallel, "threads": threads, "started": time.time()}
        if wait:
            # This process runs them; it is not a session leader, so a cancel signals it alone.
            atomic_write_json(run_file, signed({**record, **ProcessId.current().to_dict(), "group": False}))
            try:
                if recorded:
                    recorded()
                runner(paths, sub.units, parallel, threads).run(on_change)
            finally:
                run_file.unlink(missing_ok=True)
            sub.job_ids = [f"local:{os.getpid()}"]
            return sub
        # Detached: start the runner, record it under its real pid and start time, then
        # hand it its tasks through a pipe. It waits for the pipe to close, so it never
        # runs unrecorded; if this process dies first, it gets no tasks and exits.
        log_path = paths.backend(self.name).run_log(run_id)
        run_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "hpcxfer.backends.local", str(paths.dir), str(run_file)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            atomic_write_json(run_file, signed({**record, **ProcessId.of(proc.pid).to_dict(), "group": True}))
            if recorded:
                recorded()
            try:
                proc.stdin.write(json.dumps(record).encode())
                proc.stdin.close()
            except BrokenPipeError:
                raise BackendError(f"the local runner exited as it started; see {log_path}") from None
        except BaseException:
            if proc.poll() is None:
                proc.kill()  # never a runner without a run file
            run_file.unlink(missing_ok=True)
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
        sub.job_ids = [f"local:{proc.pid}"]
        return sub

    def device_memory_gb(self, grid: Grid) -> float | None:
        # This machine: a GPU's memory only when the grid states it (asking torch costs seconds).
        return grid.resources.gpu_memory_gb

    def check_resources(self, grid: Grid) -> list[str]:
        return []  # this machine: no walltime, no request

    def held(self, paths: StudyPaths) -> set[str]:
        return {t for run in live_runs(paths) for t in run["held"]}

    def view(self, paths: StudyPaths) -> dict[str, Held]:
        """Every task a live runner holds, as queued: whether it runs yet its lock says."""
        return {t: Held(Hold.QUEUED) for t in self.held(paths)}

    def cancel(self, paths: StudyPaths) -> list[str]:
        """SIGTERM to each live runner of the study (its process group when it leads one):
        it passes the signal on to its workers, which checkpoint and exit."""
        cancelled = []
        for run in live_runs(paths):
            proc: ProcessId = run["process"]
            if proc.signal_group() if run.get("group") is True else proc.signal():
                cancelled.append(f"local:{proc.pid}")
        return cancelled


def launcher(paths: StudyPaths, threads: int) -> Launch:
    """How this machine starts a unit's worker: in its own session (a cancel reaches it
    through the runner, which passes SIGTERM on), with `threads` torch threads, its output
    appended to the unit's log."""
    env = {**os.environ, "HPCXFER_THREADS": str(threads), "HPCXFER_JOB_ID": f"local:{os.getpid()}",
           "OMP_NUM_THREADS": str(threads)}

    def launch(slot: int, unit: Unit) -> subprocess.Popen:
        up = paths.group(unit.id) if unit.is_group else paths.task(unit.id)
        up.dir.mkdir(parents=True, exist_ok=True)
        with open(up.log, "ab") as out:
            return subprocess.Popen(worker_command(paths, unit.id), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)

    return launch


def runner(paths: StudyPaths, unit_ids: list[str], parallel: int, threads: int) -> Pool:
    """The pool a local run is: `parallel` units at once, waiting for a dependency that
    another live runner of the study holds."""
    return Pool(paths, unit_ids, parallel, launcher(paths, threads),
                others_hold=lambda task_id: task_id in LocalBackend().held(paths))


def _main(argv: list[str]) -> int:
    """The detached runner: python -m hpcxfer.backends.local STUDY_DIR RUN_FILE, its run
    (tasks, max_parallel, threads) as JSON on stdin once `submit` has written RUN_FILE."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths, run_file = StudyPaths(Path(argv[0])), Path(argv[1])
    try:
        try:
            run = json.loads(sys.stdin.buffer.read())
        except ValueError:
            log.error("no run on stdin (the submit that started this runner stopped first): nothing to do")
            return 2
        pool = runner(paths, run["tasks"], run["max_parallel"], run["threads"])
        outcome = pool.run()
    finally:
        run_file.unlink(missing_ok=True)
    failed = sorted(t for t, o in outcome.items() if o != "done")
    log.info("runner finished: %d done, %d not done %s", len(outcome) - len(failed), len(failed), failed)
    return pool.exit_status()


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
