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

import logging
import os
import socket
import sys
import time
import traceback

from hpcxfer import results
from hpcxfer.errors import HpcxferError
from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid.groups import is_group_id
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.layout import StudyPaths, TaskPaths
from hpcxfer.locks import Lock, LockHeld, describe
from hpcxfer.study import read_record, resolve_task
from hpcxfer.worker import EXIT_BUSY, EXIT_DONE, EXIT_FAILED, EXIT_RESUME, EXIT_USAGE
from hpcxfer.worker.signals import Interrupted, StopFlag


log = logging.getLogger("hpcxfer.worker")


def _log_to(paths: TaskPaths) -> logging.Handler:
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hpcxfer")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # stderr goes to the same log file: one line, not two
    return handler


def _threads(settings: RuntimeSettings) -> int:
    """torch's CPU threads: $HPCXFER_THREADS (a backend's say), else `runtime.threads`; 0 = torch's own."""
    return int(os.environ.get("HPCXFER_THREADS") or settings.threads)


def run_task(study_dir: str, task: str) -> int:
    """Run one task of a study to completion (or to a checkpoint on request); a protocol
    group's id runs the group (hpcxfer/worker/group.py), with the same exit statuses."""
    if is_group_id(task):
        from hpcxfer.worker.group import run_group

        return run_group(study_dir, task)
    study = StudyPaths.existing(study_dir)
    paths = study.task(resolve_task(study, task))
    _, damaged = results.load(paths.result, paths.task_id)
    if paths.result.is_file() and not damaged:
        return EXIT_DONE  # finished already: a re-run array task does nothing
    config = read_record(paths.config)
    settings = RuntimeSettings.of_config(config, paths.config)  # bad settings: exit 2, nothing touched
    lock = Lock(paths.running, {"job_id": os.environ.get("HPCXFER_JOB_ID")})
    try:
        lock.acquire()
    except LockHeld as e:
        sys.stderr.write(f"hpcxfer run-task: {paths.task_id} is being run by {describe(e.holder)}; "
                         f"exit {EXIT_BUSY}, nothing touched\n")
        return EXIT_BUSY
    try:
        _, damaged = results.load(paths.result, paths.task_id)
        if paths.result.is_file() and not damaged:
            return EXIT_DONE  # the worker that held it finished it
        return _run_locked(study, paths, settings, damaged)
    finally:
        lock.release()


def _run_locked(study: StudyPaths, paths: TaskPaths, settings: RuntimeSettings, damaged: str | None) -> int:
    import torch  # here, not at the top: a worker refused the lock exits without the wait

    from hpcxfer.worker.train import run

    handler = _log_to(paths)
    threads = _threads(settings)
    if threads:
        torch.set_num_threads(threads)
    paths.failed.unlink(missing_ok=True)
    if damaged:
        # Kept for whoever wants to see it, out of the way of status and collect.
        os.replace(paths.result, paths.result_damaged)
        log.warning("%s: its result.json was damaged (%s), moved to %s; training again",
                    paths.task_id, damaged, paths.result_damaged.name)
    try:
        with StopFlag() as stop:
            result = run(study, paths, stop)
        log.info("%s done: val_acc %.4f", paths.task_id, result["val_acc"])
        return EXIT_DONE
    except Interrupted as e:
        log.info("%s %s: checkpointed; exit %d asks to be resumed", paths.task_id, e, EXIT_RESUME)
        return EXIT_RESUME
    except HpcxferError as e:
        log.error("%s: %s", paths.task_id, e)
        _fail(paths, str(e), EXIT_USAGE)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - recorded whole in failed.json and the log
        log.exception("%s failed", paths.task_id)
        _fail(paths, f"{type(e).__name__}: {e}", EXIT_FAILED, traceback.format_exc())
        return EXIT_FAILED
    finally:
        logging.getLogger("hpcxfer").removeHandler(handler)
        handler.close()


def _fail(paths: TaskPaths, error: str, status: int, tb: str = "") -> None:
    """Record the failure in failed.json and say it in one line on stderr (the terminal of
    whoever ran the task, or the task's log under a backend). A task folder that cannot
    take failed.json (read-only, full) is said too, never a second traceback."""
    print(f"error: {paths.task_id}: {error.splitlines()[0] if error else 'failed'} (log: {paths.log})",
          file=sys.stderr)
    try:
        atomic_write_json(paths.failed, {"error": error, "exit_status": status, "log": str(paths.log),
                                         "host": socket.gethostname(), "time": time.time(),
                                         "traceback": tb[-4000:]})
    except OSError as e:
        log.error("could not write %s: %s", paths.failed, e.strerror or e)
        print(f"error: could not record the failure in {paths.failed}: {e.strerror or e}", file=sys.stderr)
