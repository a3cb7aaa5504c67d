"""A protocol group's worker: `hpcxfer run-task STUDY g-...` trains every unfinished member
of `groups/<gid>/group.json` on one stream of batches (hpcxfer/grid/groups.py).

The data, its split and subsets, the feeds and the data generator are prepared once;
each member has its own model (seeded, transferred and frozen as its solo run would
be), optimizer groups, lr schedule, scaler and loss sums. `runtime.group_mode` decides
how they step: `looped` (each member in turn on each batch; a member's records are then
bit for bit those of the task run alone) or `fused` (hpcxfer/worker/fused.py; `auto` is
fused on a GPU, looped on a CPU). Every member writes its own records in its own task
folder through the solo code (hpcxfer/worker/records.py), its result.json naming the
group; the group writes its log and one checkpoint of every member in `groups/<gid>/`.

Exit statuses are a task's (hpcxfer/worker/main.py): 0 every member done, 1 a real error
(failed.json in each unfinished member), 2 bad input, 75 checkpointed on request.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback

import torch

from hpcxfer import results
from hpcxfer.errors import CheckpointError, HpcxferError, StudyError
from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid.groups import group_key
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.study import is_done, read_group, read_record
from hpcxfer.locks import Lock, LockHeld, describe
from hpcxfer.worker import EXIT_BUSY, EXIT_DONE, EXIT_FAILED, EXIT_RESUME, EXIT_USAGE, checkpoint
from hpcxfer.worker.learners import Data, Learner, Looped, Trainer, global_rng, prepare_data, prepare_model
from hpcxfer.worker.main import _log_to, _threads
from hpcxfer.worker.records import Records, finish, run_info
from hpcxfer.worker.signals import Interrupted, StopFlag
from hpcxfer.worker.train import Checkpointer, fit

log = logging.getLogger("hpcxfer.worker.group")


def _claim(tp: TaskPaths, group_id: str) -> Lock:
    """Take a member's task lock (its running.json), as run_task takes a task's: LockHeld
    when another live worker holds it."""
    return Lock(tp.running, {"job_id": os.environ.get("HPCXFER_JOB_ID"), "group": group_id}).acquire()


def _note(tp: TaskPaths, message: str) -> None:
    """One line in a member's own log.txt; the group's log has the detail."""
    try:
        with open(tp.log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO hpcxfer.worker.group: {message}\n")
    except OSError as e:
        log.warning("could not write %s: %s", tp.log, e.strerror or e)


def run_group(study_dir: str, group_id: str) -> int:
    """Train every unfinished member of a group to completion (or to a checkpoint on
    request); the exit status of `hpcxfer run-task`."""
    study = StudyPaths.existing(study_dir)
    gp = study.group(group_id)
    members = list(read_group(study, group_id).members)
    todo = [tp for tp in map(study.task, members) if not is_done(tp)]
    if not todo:
        return EXIT_DONE  # finished already: a re-run array task does nothing
    configs = [read_record(tp.config) for tp in todo]
    # bad settings: exit 2, nothing touched
    settings = [RuntimeSettings.of_config(config, tp.config) for tp, config in zip(todo, configs)]
    threads = _threads(settings[0])
    handler = _log_to(gp)
    if threads:
        torch.set_num_threads(threads)
    log.info("group %s: %d of %d members to train: %s", group_id, len(todo), len(members),
             " ".join(tp.task_id for tp in todo))
    claimed: list[TaskPaths] = []
    locks: list[Lock] = []
    try:
        for tp in todo:
            try:
                locks.append(_claim(tp, group_id))
            except LockHeld as e:
                # Another worker trains a member: the group is not this worker's to run now.
                log.info("group %s: %s is being run by %s; exit %d", group_id, tp.task_id, describe(e.holder),
                         EXIT_BUSY)
                sys.stderr.write(f"hpcxfer run-task: {group_id}: member {tp.task_id} is being run by "
                                 f"{describe(e.holder)}; exit {EXIT_BUSY}, nothing trained\n")
                return EXIT_BUSY
            claimed.append(tp)
        finished = [tp.task_id for tp in claimed if is_done(tp)]
        if finished:  # another worker finished it between our look and our lock
            sys.stderr.write(f"hpcxfer run-task: {group_id}: member {finished[0]} was finished by another worker; "
                             f"exit {EXIT_BUSY}, nothing trained (the next submit regroups what is left)\n")
            return EXIT_BUSY
        for tp in claimed:
            tp.failed.unlink(missing_ok=True)
            _, damaged = results.load(tp.result, tp.task_id)
            if damaged:  # kept for whoever wants to see it, out of the way of status and collect
                os.replace(tp.result, tp.result_damaged)
                log.warning("%s: its result.json was damaged (%s), moved to %s; training again",
                            tp.task_id, damaged, tp.result_damaged.name)
            _note(tp, f"trained in protocol group {group_id} with {len(todo) - 1} other(s) (log: {gp.log})")
        with StopFlag() as stop:
            done = train_group(study, gp, members, todo, configs, stop)
        for tp, result in zip(todo, done):
            log.info("%s done: val_acc %.4f", tp.task_id, result["val_acc"])
            _note(tp, f"done in group {group_id}: val_acc {result['val_acc']:.4f}")
        return EXIT_DONE
    except Interrupted as e:
        log.info("group %s %s: checkpointed; exit %d asks to be resumed", group_id, e, EXIT_RESUME)
        for tp in claimed:
            _note(tp, f"group {group_id} {e}: checkpointed")
        return EXIT_RESUME
    except HpcxferError as e:
        log.error("group %s: %s", group_id, e)
        _fail(gp, claimed, str(e), EXIT_USAGE)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - recorded whole in each member's failed.json and the log
        log.exception("group %s failed", group_id)
        _fail(gp, claimed, f"{type(e).__name__}: {e}", EXIT_FAILED, traceback.format_exc())
        return EXIT_FAILED
    finally:
        for lock in locks:  # only what this worker holds
            lock.release()
        logging.getLogger("hpcxfer").removeHandler(handler)
        handler.close()


def _fail(gp: GroupPaths, claimed: list[TaskPaths], error: str, status: int, tb: str = "") -> None:
    """failed.json in every member this worker holds and leaves unfinished, pointing at the
    group's log; one line on stderr for the group."""
    line = error.splitlines()[0] if error else "failed"
    print(f"error: {gp.group_id}: {line} (log: {gp.log})", file=sys.stderr)
    record = {"error": error, "exit_status": status, "log": str(gp.log), "group": gp.group_id,
              "host": socket.gethostname(), "time": time.time(), "traceback": tb[-4000:]}
    for tp in claimed:
        if is_done(tp):
            continue
        _note(tp, f"failed in group {gp.group_id}: {line}")
        try:
            atomic_write_json(tp.failed, record)
        except OSError as e:
            log.error("could not write %s: %s", tp.failed, e.strerror or e)


def _check(gp: GroupPaths, tasks: list[Task], configs: list[dict]) -> None:
    """Members of a group differ in their protocol only (hpcxfer/grid/groups.py GROUP_FREE)."""
    first = tasks[0]
    shared = dict(group_key(first))
    first_runtime = RuntimeSettings.of_config(configs[0])
    for task, config in zip(tasks, configs):
        if task.stage != "finetune":
            raise StudyError(f"{gp.config}: member {task.task_id} is a {task.stage} task; groups are fine-tuning")
        if group_key(task) != group_key(first):
            fields = sorted(k for k, v in group_key(task) if shared.get(k) != v)
            raise StudyError(f"{gp.config}: member {task.task_id} differs from {first.task_id} in more than "
                             f"its protocol ({', '.join(fields)}); run `hpcxfer submit` again to regroup")
        if config.get("data") != configs[0].get("data"):
            raise StudyError(f"{gp.config}: members {first.task_id} and {task.task_id} read different data")
        if RuntimeSettings.of_config(config) != first_runtime:
            log.warning("%s: runtime settings differ from %s's; the group runs with %s's", task.task_id,
                        first.task_id, first.task_id)


def _mode(runtime: RuntimeSettings, device: torch.device, learners: list[Learner]) -> str:
    from hpcxfer.worker.fused import UNSUPPORTED, fusable

    mode = runtime.group_mode
    if mode == "auto":
        mode = "fused" if device.type == "cuda" else "looped"
    if mode == "fused" and len(learners) == 1:
        return "looped"  # nothing to fuse; looped is the solo run
    if mode == "fused" and not fusable(learners[0].model):
        log.warning("%s (%s has buffers): stepping the members looped", UNSUPPORTED, learners[0].task.arch)
        return "looped"
    if mode == "fused" and runtime.compile:
        log.info("runtime.compile applies to looped mode; the fused step runs uncompiled")
    return mode


def _owned(obj: object) -> object:
    """A copy of a state on the CPU: a fused member's tensors are views of the stacked rows,
    which torch.save would write whole for every member."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _owned(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_owned(v) for v in obj)
    return obj


def prepare_group(study: StudyPaths, tasks: list[Task], configs: list[dict]) -> tuple[Data, list[Learner]]:
    """The shared data and every member's model, each as its solo run prepares it."""
    runtime = RuntimeSettings.of_config(configs[0])
    data = prepare_data(tasks[0], configs[0].get("data", {}), runtime)
    sources: dict = {}
    learners, after = [], None
    for task in tasks:
        learners.append(prepare_model(task, runtime, study, data, sources))
        # Each member leaves torch's generator where its solo run starts training; members
        # of one architecture leave it at one place, where the group's dropout starts.
        state = global_rng(data.device)[0]
        if after is not None and not torch.equal(state, after):
            raise RuntimeError(f"{task.task_id}: its model drew other random numbers than {tasks[0].task_id}'s")
        after = state
    return data, learners


def train_group(study: StudyPaths, gp: GroupPaths, members: list[str], todo: list[TaskPaths],
                configs: list[dict], stop: StopFlag | None = None) -> list[dict]:
    """Train the members in `todo` (with their `configs`) together, resuming from the
    group's checkpoint; their results, also written to each member's result.json."""
    tasks = [Task.from_dict(c) for c in configs]
    _check(gp, tasks, configs)
    runtime = RuntimeSettings.of_config(configs[0], todo[0].config)
    data, learners = prepare_group(study, tasks, configs)
    mode = _mode(runtime, data.device, learners)
    gen = torch.Generator().manual_seed(tasks[0].seed)
    trainer: Trainer | None = None  # built after the resume: fused mode stacks what it restored

    def contents() -> dict:
        if trainer is not None:
            trainer.sync()
        return {"mode": mode, "members": {
            learner.task.task_id: _owned({"task": learner.task.identity(), "config": config, **learner.state()})
            for learner, config in zip(learners, configs)}}

    def restore(state: dict) -> None:
        stored = state["members"]
        for learner in learners:
            tid = learner.task.task_id
            if tid not in stored:
                raise CheckpointError(
                    f"{gp.checkpoint}: member {tid} is unfinished but not in the group's checkpoint (its result "
                    f"was removed after the group started?); run it alone (`hpcxfer run-task STUDY {tid}`), or "
                    f"remove {gp.checkpoint.name} to train every unfinished member afresh")
            if stored[tid]["task"] != learner.task.identity():
                raise CheckpointError(f"{gp.checkpoint}: member {tid}'s state belongs to a different task config; "
                                      f"refusing to resume (remove it to start this group afresh)")
            learner.load(stored[tid])
        for tid in sorted(set(stored) - {learner.task.task_id for learner in learners}):
            log.info("%s is done since the group's checkpoint; not training it", tid)

    identity = {"group_id": gp.group_id, "members": members}
    ckpt = Checkpointer(gp, identity, gen, runtime.checkpoint_minutes, stop, contents, restore)
    pos = ckpt.resume()
    if mode == "fused":
        from hpcxfer.worker.fused import Fused

        trainer = Fused(learners, data.precision)
    else:
        trainer = Looped(learners, data.precision)
    log.info("group %s: %d members %s on %s (%s), epoch %d step %d", gp.group_id, len(learners), mode,
             data.device, data.precision.name, pos.epoch, pos.step)
    for tp in todo:
        if tp.checkpoint.exists():
            log.info("%s: its own checkpoint (from a run alone) is not used; the group trains it from the "
                     "group's position and removes that checkpoint when done", tp.task_id)
    records = [Records(tp, runtime, pos.epoch) for tp in todo]
    startup = fit(trainer, data, gen, pos, ckpt, records, runtime, gp.profile)
    info = {**run_info(ckpt, startup, data), "group": gp.group_id}
    done = [finish(tp, learner.task, learner.model, learner.last, info) for tp, learner in zip(todo, learners)]
    for rec, learner, result in zip(records, learners, done):
        rec.hparams(learner.task, result)
    if not runtime.keep_checkpoints:
        checkpoint.remove(gp)
        for tp in todo:
            checkpoint.remove(tp)  # a solo run's checkpoint from before the group, now stale
    return done
