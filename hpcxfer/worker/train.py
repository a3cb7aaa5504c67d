"""One task, start to finish: data -> model -> protocol -> epochs -> records.

A plain loop with explicit arguments, in pieces that a protocol group (hpcxfer/worker/
group.py) shares with a task run alone: `fit` runs the epochs of one or more models
(hpcxfer/worker/learners.py) over one stream of batches, `train_one_epoch` and `evaluate`
do one pass each (hpcxfer/worker/checkpoint.py's `Checkpointer` decides when to save), and
`train_unit` builds the checkpointer, the records and the results of a unit's members once,
for a task alone (`run`) and for a group alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from hpcxfer.fileio import read_json
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.worker import checkpoint
from hpcxfer.worker.checkpoint import Checkpointer, Position
from hpcxfer.worker.learners import (
    Data,
    Learner,
    Looped,
    Sums,
    Trainer,
    prepare_data,
    prepare_model,
)
from hpcxfer.worker.observe import process_age, profiler
from hpcxfer.worker.records import Records, finish, run_info
from hpcxfer.worker.signals import Interrupted, StopFlag

__all__ = ["EVAL_BATCH", "Interrupted", "evaluate", "fit", "run", "train_one_epoch", "train_unit"]

log = logging.getLogger(__name__)

EVAL_BATCH = 1024


def train_one_epoch(data: Data, gen: torch.Generator, pos: Position, batch_size: int,
                    step_all: Callable[[torch.Tensor, torch.Tensor], None],
                    after_step: Callable[[Position], None] = lambda pos: None) -> float:
    """The rest of epoch `pos.epoch` from step `pos.step`, in an order drawn from `gen` at
    the epoch's start, each batch augmented once (from `gen`) and given to `step_all`;
    `after_step` runs after every step (checkpoints, stop requests). Returns images/s."""
    n = len(data.train)
    if pos.order is None:
        pos.order = torch.randperm(n, generator=gen)
    seconds_before, start = pos.seconds, time.perf_counter()
    for x, y in data.train.batches(pos.order, batch_size, pos.step):
        step_all(data.precision.images(data.normalize(data.augment(x, gen))), y)
        pos.step += 1
        pos.seconds = seconds_before + time.perf_counter() - start
        after_step(pos)
    seconds = seconds_before + time.perf_counter() - start
    return n / seconds if seconds > 0 else 0.0


@torch.no_grad()
def evaluate(data: Data, forward: Callable[[torch.Tensor], Iterable[torch.Tensor]], models: int) -> list[dict]:
    """Validation loss and accuracy of each of `models` models: every validation batch is
    prepared once and `forward` gives each model's output on it."""
    n = len(data.val)
    sums = [Sums.zero(data.device) for _ in range(models)]
    for x, y in data.val.batches(torch.arange(n), EVAL_BATCH):
        with data.precision.autocast():
            outs = forward(data.precision.images(data.normalize(data.view(x))))
        for s, out in zip(sums, outs, strict=True):
            s.loss += nn.functional.cross_entropy(out.float(), y, reduction="sum")
            s.correct += (out.argmax(1) == y).sum()
    return [{"val_loss": s.loss.item() / n, "val_acc": s.correct.item() / n} for s in sums]


def fit(trainer: Trainer, data: Data, gen: torch.Generator, pos: Position, ckpt: Checkpointer,
        records: Sequence[Records], runtime: RuntimeSettings, profile_dir: Path) -> float | None:
    """Train every model of `trainer` from `pos` to the end of its task's epochs (shared:
    one group's members have the same epochs, batch size and stream), one metrics record
    per model and evaluation. Returns the seconds from process start to the first step."""
    first = trainer.learners[0].task
    startup: list[float] = []
    eval_every = runtime.eval_every
    keep = runtime.keep_checkpoints
    with profiler(profile_dir, runtime.profile, data.device.type == "cuda") as prof:
        def after_step(at: Position) -> None:
            if not startup:
                startup.append(process_age())
                log.info("first step %.2f s after process start", startup[0])
            prof.step()
            ckpt.after_step(at)

        try:
            while pos.epoch < first.epochs:
                lrs = trainer.set_epoch(pos.epoch)
                if pos.step == 0:
                    for learner in trainer.learners:
                        learner.sums = Sums.zero(data.device)
                trainer.train()
                images_per_s = train_one_epoch(data, gen, pos, first.batch_size, trainer.step, after_step)
                done = pos.epoch + 1
                if done % eval_every == 0 or done == first.epochs:
                    trainer.eval()
                    val = evaluate(data, trainer.forward, len(trainer.learners))
                    for learner, rec, lr, v in zip(trainer.learners, records, lrs, val, strict=True):
                        learner.last = {"epoch": done, **learner.sums.stats(len(data.train)),
                                        "images_per_s": images_per_s, **v, **lr, "wall_s": ckpt.wall()}
                        rec.add(learner.last)
                pos = Position(epoch=done)
                for rec in records:
                    rec.progress(done, first.epochs)
                if done < first.epochs:
                    ckpt.epoch_end(pos)
                elif keep:
                    ckpt.save(pos)  # the trained models, for whoever asked to keep them
        finally:
            for rec in records:
                rec.close()
    return startup[0] if startup else None


def train_unit(folder: TaskPaths | GroupPaths, identity: dict, todo: Sequence[TaskPaths], learners: list[Learner],
               data: Data, runtime: RuntimeSettings, stop: StopFlag | None, contents: Callable[[], dict],
               restore: Callable[[dict], None], trainer_for: Callable[[Position], Trainer],
               info: dict | None = None, start: dict | None = None) -> list[dict]:
    """Train `learners` (the unfinished members `todo`, in order) to the end, resuming from
    `folder`'s checkpoint (checked against `identity`; `contents`/`restore` are the models'
    part of it; `start`: the state to start from when `folder` has no checkpoint, a group's
    composed from its members' own); `trainer_for` steps them, built once the checkpoint is
    restored. Writes and returns each member's result (with `info` added). A task alone is
    a unit of one."""
    gen = torch.Generator().manual_seed(learners[0].task.seed)
    ckpt = Checkpointer(folder, identity, gen, runtime.checkpoint_minutes, stop, contents, restore, todo, start)
    pos = ckpt.resume()
    trainer = trainer_for(pos)
    records = [Records(tp, runtime, pos.epoch) for tp in todo]
    startup = fit(trainer, data, gen, pos, ckpt, records, runtime, folder.profile)
    shared = {**run_info(ckpt, startup, data), **(info or {})}
    done = [finish(tp, learner.task, learner.model, learner.last, shared) for tp, learner in zip(todo, learners)]
    for rec, learner, result in zip(records, learners, done):
        rec.hparams(learner.task, result)
        rec.finished()
    if not runtime.keep_checkpoints:
        checkpoint.remove(folder)
        for tp in todo:
            checkpoint.remove(tp)  # a group's member: a solo run's checkpoint from before the group, now stale
    return done


def run(study: StudyPaths, paths: TaskPaths, stop: StopFlag | None = None,
        runtime: RuntimeSettings | None = None) -> dict:
    """Train the task in `paths` to completion, resuming from its checkpoint if it has one;
    `runtime` overrides its task.json's settings (the unit's pre-flight turns off an
    observer that cannot load).

    Returns the result record, which is also written to result.json. Raises Interrupted
    after checkpointing when `stop` is set (a signal arrived).
    """
    config = read_json(paths.config)
    task = Task.from_dict(config)
    runtime = runtime or RuntimeSettings.of_config(config, paths.config)
    data = prepare_data(task, config.get("data", {}), runtime)
    learner = prepare_model(task, runtime, study, data)
    return train_unit(paths, task.identity(), [paths], [learner], data, runtime, stop,
                      contents=lambda: {"config": config, **learner.state()}, restore=learner.load,
                      trainer_for=lambda pos: Looped([learner], data.precision))[0]
