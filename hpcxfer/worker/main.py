"""Entry of one task process: logging, the running marker, and an exit status that says
what happened. Exit statuses (documented in the README):

    0   done: result.json is written
    1   failed for a real error: failed.json says why; do not retry blindly
    2   bad input (missing study, unknown task, unusable checkpoint): nothing was trained
    75  interrupted on request (SIGUSR1, SIGUSR2 or SIGTERM): checkpointed at the next
        step, resume me (EX_TEMPFAIL)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback

import torch

from hpcxfer.errors import HpcxferError
from hpcxfer.fileio import atomic_write_json, read_json
from hpcxfer.layout import StudyPaths, TaskPaths
from hpcxfer.study import resolve_task
from hpcxfer.worker import EXIT_DONE, EXIT_FAILED, EXIT_RESUME, EXIT_USAGE
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


def _threads(runtime: dict) -> int:
    return int(os.environ.get("HPCXFER_THREADS") or runtime.get("threads") or 0)


def run_task(study_dir: str, task: str) -> int:
    """Run one task of a study to completion (or to a checkpoint on request)."""
    from hpcxfer.worker.train import run

    study = StudyPaths.existing(study_dir)
    paths = study.task(resolve_task(study, task))
    if paths.result.is_file():
        return EXIT_DONE  # finished already: a re-run array task does nothing
    config = read_json(paths.config)
    handler = _log_to(paths)
    threads = _threads(config.get("runtime", {}))
    if threads:
        torch.set_num_threads(threads)
    atomic_write_json(paths.running, {"host": socket.gethostname(), "pid": os.getpid(),
                                      "started": time.time(), "job_id": os.environ.get("HPCXFER_JOB_ID")})
    paths.failed.unlink(missing_ok=True)
    try:
        with StopFlag() as stop:
            result = run(study, paths, stop)
        log.info("%s done: val_acc %.4f", paths.task_id, result["val_acc"])
        return EXIT_DONE
    except Interrupted as e:
        log.info("%s %s: checkpointed; exit %d asks to be resumed", paths.task_id, e, EXIT_RESUME)
        return EXIT_RESUME
    except HpcxferError as e:
        _fail(paths, str(e), EXIT_USAGE)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - recorded whole in failed.json and the log
        log.exception("%s failed", paths.task_id)
        _fail(paths, f"{type(e).__name__}: {e}", EXIT_FAILED, traceback.format_exc())
        return EXIT_FAILED
    finally:
        paths.running.unlink(missing_ok=True)
        logging.getLogger("hpcxfer").removeHandler(handler)
        handler.close()


def _fail(paths: TaskPaths, error: str, status: int, tb: str = "") -> None:
    atomic_write_json(paths.failed, {"error": error, "exit_status": status, "log": str(paths.log),
                                     "host": socket.gethostname(), "time": time.time(),
                                     "traceback": tb[-4000:]})
