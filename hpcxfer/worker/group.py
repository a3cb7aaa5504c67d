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
At a search's rung that checkpoint is split into each member's own, and a group whose
members all have their own checkpoints at one epoch boundary starts from those
(hpcxfer/worker/checkpoint.py `split`, `compose`): survivors of several groups regroup.

The lifecycle around it (locks, log, exit statuses, failed.json) is a task's: both are
units (hpcxfer/worker/unit.py), which calls `train_group` once the members are locked.
"""

from __future__ import annotations

import logging

import torch

from hpcxfer.errors import CheckpointError, StudyError
from hpcxfer.grid.groups import group_key
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.worker import checkpoint
from hpcxfer.worker.checkpoint import Position
from hpcxfer.worker.learners import (
    Data,
    Learner,
    Looped,
    Trainer,
    global_rng,
    prepare_data,
    prepare_model,
)
from hpcxfer.worker.signals import StopFlag
from hpcxfer.worker.train import train_unit

log = logging.getLogger("hpcxfer.worker.group")


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


def _start(gp: GroupPaths, identity: dict, todo: list[TaskPaths], tasks: list[Task], mode: str) -> dict | None:
    """Where a group without a checkpoint of its own starts: at epoch 0 (None) when no
    member has progress, or the state its members' own checkpoints make up when all have
    one (a search's survivors, split at a rung: `checkpoint.compose` checks they stand at
    one epoch boundary in one random state). Never from epoch 0 over a member's progress."""
    if any(p.exists() for p in (gp.checkpoint, gp.checkpoint_new, gp.checkpoint_prev)):
        return None  # the group's checkpoint holds its members' progress
    own = [tp for tp in todo if any(p.exists() for p in (tp.checkpoint, tp.checkpoint_new, tp.checkpoint_prev))]
    if not own:
        return None
    if len(own) < len(todo):
        tp = own[0]
        raise CheckpointError(f"{tp.checkpoint}: member {tp.task_id} has a checkpoint of its run alone, which "
                              f"this new group would throw away; `hpcxfer submit` runs it alone from there "
                              f"(or remove it to train the member in this group from epoch 0)")
    return checkpoint.compose(gp, identity, [(tp, t.identity()) for tp, t in zip(todo, tasks)], mode)


def train_group(study: StudyPaths, gp: GroupPaths, members: list[str], todo: list[TaskPaths],
                configs: list[dict], stop: StopFlag | None = None,
                runtime: RuntimeSettings | None = None) -> list[dict]:
    """Train the members in `todo` (with their `configs`) together, resuming from the
    group's checkpoint; their results, also written to each member's result.json.
    `runtime` overrides the first member's settings (the unit's pre-flight)."""
    tasks = [Task.from_dict(c) for c in configs]
    _check(gp, tasks, configs)
    runtime = runtime or RuntimeSettings.of_config(configs[0], todo[0].config)
    data, learners = prepare_group(study, tasks, configs)
    mode = _mode(runtime, data.device, learners)
    identity = {"group_id": gp.group_id, "members": members}
    start = _start(gp, identity, todo, tasks, mode)
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

    def trainer_for(pos: Position) -> Trainer:
        nonlocal trainer
        if mode == "fused":
            from hpcxfer.worker.fused import Fused

            trainer = Fused(learners, data.precision)
        else:
            trainer = Looped(learners, data.precision)
        log.info("group %s: %d members %s on %s (%s), epoch %d step %d", gp.group_id, len(learners), mode,
                 data.device, data.precision.name, pos.epoch, pos.step)
        for tp in todo:
            if start is None and tp.checkpoint.exists():  # the group's checkpoint holds the member's progress
                log.info("%s: its own checkpoint is not used; the group trains it from the group's position and "
                         "removes that checkpoint when done", tp.task_id)
        return trainer

    return train_unit(gp, identity, todo, learners, data, runtime, stop, contents, restore, trainer_for,
                      {"group": gp.group_id}, start)
