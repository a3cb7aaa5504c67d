"""One worker lifecycle for a task alone and for a protocol group: a task is a group of one.

`run` is what `hpcxfer run-task STUDY TASK` runs, for a task's id (or index) and a group's
id alike: resolve the unit and its unfinished members; take each member's lock (its
running.json) and exit Exit.BUSY, touching nothing, when one is held; check that the task
can run at all (`preflight`: modules, device, data, folders) before anything but the lock
is written; move a damaged result aside; log to the unit's folder (a task's log.txt, or
the group's); train (hpcxfer/worker/train.py, group.py); and map every outcome to an Exit,
writing failed.json where it failed. torch is imported only once the locks are held, so a
worker refused the lock exits without paying for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from hpcxfer import results
from hpcxfer.errors import ConfigError, DataError, HpcxferError
from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid.groups import is_group_id
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.locks import Lock, LockHeld, describe, inspect
from hpcxfer.states import Exit
from hpcxfer.study import is_done, read_group, read_record, resolve_task
from hpcxfer.worker.signals import Interrupted, StopFlag

log = logging.getLogger("hpcxfer.worker")

#: Data sets read from image files, which PIL decodes.
PIL_DATASETS = ("imagenet", "folders")


@dataclass(frozen=True)
class Unit:
    """What one worker runs: a task alone, or a protocol group's unfinished members."""

    study: StudyPaths
    folder: TaskPaths | GroupPaths  # its log, checkpoint and profile
    members: tuple[str, ...]  # every member's task id (a task alone: its own)
    todo: tuple[TaskPaths, ...]  # the members without a valid result, which this worker trains
    configs: tuple[dict, ...]  # their task.json records
    settings: RuntimeSettings  # the first unfinished member's; a group runs with them

    @property
    def is_group(self) -> bool:
        return isinstance(self.folder, GroupPaths)

    @property
    def name(self) -> str:
        return f"group {self.folder.dir.name}" if self.is_group else self.folder.dir.name


def resolve(study_dir: str, spec: str) -> Unit:
    """The unit `spec` (a task's index or id, or a group's id) names; a StudyError or
    ConfigError (exit 2, nothing touched) for a missing study, task or bad settings."""
    study = StudyPaths.existing(study_dir)
    if is_group_id(spec):
        folder: TaskPaths | GroupPaths = study.group(spec)
        members = tuple(read_group(study, spec).members)
    else:
        folder = study.task(resolve_task(study, spec))
        members = (folder.dir.name,)
    todo = tuple(tp for tp in map(study.task, members) if not is_done(tp))
    configs = tuple(read_record(tp.config) for tp in todo)
    settings = [RuntimeSettings.of_config(config, tp.config) for tp, config in zip(todo, configs)]
    return Unit(study, folder, members, todo, configs, settings[0] if settings else RuntimeSettings())


def run(study_dir: str, spec: str) -> int:
    """Run the unit `spec` names to completion (or to a checkpoint on request); its Exit."""
    unit = resolve(study_dir, spec)
    if not unit.todo:
        return Exit.DONE  # finished already: a re-run array task does nothing
    locks: list[Lock] = []
    dead: list[TaskPaths] = []  # members whose last worker died holding the lock (killed)
    try:
        for tp in unit.todo:
            before = inspect(tp.running)  # a lock no live worker holds: its worker was killed
            extra = {"job_id": os.environ.get("HPCXFER_JOB_ID")}
            try:
                locks.append(Lock(tp.running, {**extra, "group": unit.folder.dir.name} if unit.is_group
                                  else extra).acquire())
            except LockHeld as e:
                what = f"member {tp.task_id}" if unit.is_group else tp.task_id
                prefix = f"{unit.folder.dir.name}: " if unit.is_group else ""
                sys.stderr.write(f"hpcxfer run-task: {prefix}{what} is being run by {describe(e.holder)}; "
                                 f"exit {Exit.BUSY:d}, {'nothing trained' if unit.is_group else 'nothing touched'}\n")
                return Exit.BUSY
            if before is not None and not before.live:
                dead.append(tp)
        finished = [tp.task_id for tp in unit.todo if is_done(tp)]
        if finished and not unit.is_group:
            return Exit.DONE  # the worker that held it finished it
        if finished:
            sys.stderr.write(f"hpcxfer run-task: {unit.folder.dir.name}: member {finished[0]} was finished by "
                             f"another worker; exit {Exit.BUSY:d}, nothing trained (the next submit regroups "
                             f"what is left)\n")
            return Exit.BUSY
        return _run_locked(unit, dead)
    finally:
        for lock in locks:  # only what this worker holds
            lock.release()


def preflight(unit: Unit) -> tuple[RuntimeSettings, list[str]]:
    """What must hold before the first step, checked before anything but the locks is
    written: every module the settings need imports, the device exists, the data set is
    readable, the folders are writable. A problem is a ConfigError (exit 2); an optional
    observer (TensorBoard, the profiler) that cannot load is turned off, with a warning.
    Returns the settings to train with and the warnings."""
    config, where = unit.configs[0], unit.todo[0].config
    settings, warnings = unit.settings, []
    needed = ["torch", "torchvision"] + (["PIL"] if config.get("dataset") in PIL_DATASETS else [])
    for module in needed:
        problem = _import_problem(module)
        if problem:
            raise ConfigError(where, "dataset" if module == "PIL" else None,
                              f"this task needs {module}, which cannot be imported here ({problem})",
                              "pip install 'hpcxfer[train]'")
    observers = {"tensorboard": "torch.utils.tensorboard", "profile": "torch.profiler"}
    for field, module in observers.items():
        problem = getattr(settings, field) and _import_problem(module)
        if problem:
            warnings.append(f"runtime.{field}: {module} cannot be imported ({problem}); training without it")
            settings = dataclasses.replace(settings, **{field: False})  # type: ignore[arg-type]
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(where, "runtime.device", "cuda is asked for but this machine has no usable GPU")
    path = (config.get("data") or {}).get("path")
    if path and not os.access(path, os.R_OK):
        raise DataError(where, "data.path", f"{path} is missing or not readable here")
    for folder in {unit.folder.dir, *(tp.dir for tp in unit.todo)}:
        if not os.access(folder, os.W_OK):
            raise ConfigError(folder, None, "this folder is not writable: nothing could be recorded")
    return settings, warnings


def _import_problem(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a module that fails to import, however it fails
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def log_to(folder: TaskPaths | GroupPaths) -> logging.Handler:
    """Send hpcxfer's log records to `folder`'s log.txt until the handler is removed."""
    handler = logging.FileHandler(folder.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hpcxfer")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # stderr goes to the same log file: one line, not two
    return handler


def threads(settings: RuntimeSettings) -> int:
    """torch's CPU threads: $HPCXFER_THREADS (a backend's say), else `runtime.threads`; 0 = torch's own."""
    return int(os.environ.get("HPCXFER_THREADS") or settings.threads)


def _run_locked(unit: Unit, dead: list[TaskPaths]) -> Exit:
    try:
        settings, warnings = preflight(unit)
    except HpcxferError as e:
        print(f"error: {e}", file=sys.stderr)  # nothing was trained, nothing written: no failed.json
        return Exit.USAGE
    handler = log_to(unit.folder)
    try:
        return _train(unit, settings, warnings, dead)
    finally:
        logging.getLogger("hpcxfer").removeHandler(handler)
        handler.close()


def _train(unit: Unit, settings: RuntimeSettings, warnings: list[str], dead: list[TaskPaths]) -> Exit:
    import torch

    from hpcxfer.worker.records import count_interruption

    for warning in warnings:
        log.warning("%s: %s", unit.name, warning)
    if threads(settings):
        torch.set_num_threads(threads(settings))
    if unit.is_group:
        log.info("%s: %d of %d members to train: %s", unit.name, len(unit.todo), len(unit.members),
                 " ".join(tp.task_id for tp in unit.todo))
    for tp in unit.todo:
        tp.failed.unlink(missing_ok=True)
        _, damaged = results.load(tp.result, tp.task_id)
        if damaged:  # kept for whoever wants to see it, out of the way of status and collect
            os.replace(tp.result, tp.result_damaged)
            log.warning("%s: its result.json was damaged (%s), moved to %s; training again",
                        tp.task_id, damaged, tp.result_damaged.name)
        if unit.is_group:
            _note(tp, f"trained in protocol {unit.name} with {len(unit.todo) - 1} other(s) (log: {unit.folder.log})")
    for tp in dead:
        log.info("%s: its last worker died holding the task; counted as an interruption", tp.task_id)
        count_interruption(tp)
    try:
        with StopFlag() as stop:
            done = _train_members(unit, settings, stop)
        for tp, result in zip(unit.todo, done):
            log.info("%s done: val_acc %.4f", tp.task_id, result["val_acc"])
            if unit.is_group:
                _note(tp, f"done in {unit.name}: val_acc {result['val_acc']:.4f}")
        return Exit.DONE
    except Interrupted as e:
        log.info("%s %s: checkpointed; exit %d asks to be resumed", unit.name, e, Exit.RESUME)
        for tp in unit.todo:
            count_interruption(tp)
            if unit.is_group:
                _note(tp, f"{unit.name} {e}: checkpointed")
        return Exit.RESUME
    except HpcxferError as e:
        log.error("%s: %s", unit.name, e)
        _fail(unit, str(e), Exit.USAGE)
        return Exit.USAGE
    except Exception as e:  # recorded whole in failed.json and the log
        log.exception("%s failed", unit.name)
        _fail(unit, f"{type(e).__name__}: {e}", Exit.FAILED, traceback.format_exc())
        return Exit.FAILED


def _train_members(unit: Unit, settings: RuntimeSettings, stop: StopFlag) -> list[dict]:
    if isinstance(unit.folder, GroupPaths):  # unit.is_group
        from hpcxfer.worker.group import train_group

        return train_group(unit.study, unit.folder, list(unit.members), list(unit.todo), list(unit.configs),
                           stop, settings)
    from hpcxfer.worker.train import run

    return [run(unit.study, unit.todo[0], stop, settings)]


def _note(tp: TaskPaths, message: str) -> None:
    """One line in a member's own log.txt; the group's log has the detail."""
    try:
        with open(tp.log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO hpcxfer.worker.group: {message}\n")
    except OSError as e:
        log.warning("could not write %s: %s", tp.log, e.strerror or e)


def _fail(unit: Unit, error: str, status: Exit, tb: str = "") -> None:
    """failed.json in every unfinished member, and one line on stderr (the terminal of whoever
    ran the task, or its log under a backend). A folder that cannot take failed.json
    (read-only, full) is said too, never a second traceback."""
    line = error.splitlines()[0] if error else "failed"
    print(f"error: {unit.folder.dir.name}: {line} (log: {unit.folder.log})", file=sys.stderr)
    group = {"group": unit.folder.dir.name} if unit.is_group else {}
    record = {"error": error, "exit_status": int(status), "log": str(unit.folder.log), **group,
              "host": socket.gethostname(), "time": time.time(), "traceback": tb[-4000:]}
    for tp in unit.todo:
        if is_done(tp):
            continue
        if unit.is_group:
            _note(tp, f"failed in {unit.name}: {line}")
        try:
            atomic_write_json(tp.failed, record)
        except OSError as e:
            log.error("could not write %s: %s", tp.failed, e.strerror or e)
            print(f"error: could not record the failure in {tp.failed}: {e.strerror or e}", file=sys.stderr)
