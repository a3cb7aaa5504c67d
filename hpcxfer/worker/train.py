"""One task, start to finish: data -> model -> protocol -> epochs -> records.

A plain loop with explicit arguments, in pieces that a protocol group (hpcxfer/worker/
group.py) shares with a task run alone: `fit` runs the epochs of one or more models
(hpcxfer/worker/learners.py) over one stream of batches, `train_one_epoch` and `evaluate`
do one pass each, `Checkpointer` resumes from the newest checkpoint, checkpoints on a time
cadence and at cheap epoch ends, and on a stop request checkpoints at the next step and
raises `Interrupted`. `run` ties them to a task's files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpcxfer.fileio import read_json
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.worker import checkpoint
from hpcxfer.worker.learners import Data, Looped, Sums, Trainer, prepare_data, prepare_model
from hpcxfer.worker.observe import process_age, profiler
from hpcxfer.worker.records import Records, finish, run_info
from hpcxfer.worker.signals import Interrupted, StopFlag

log = logging.getLogger(__name__)

EVAL_BATCH = 1024
#: An epoch end is "cheap" to checkpoint when the last save took at most this share of
#: the time since the save before it.
CHEAP_SAVE = 0.05


@dataclass
class Position:
    """Where the loop is: the epoch in progress (= epochs completed), the steps done in it,
    its data order and its training seconds so far. A mid-epoch checkpoint stores all of
    it, with each model's running sums."""

    epoch: int
    step: int = 0
    order: torch.Tensor | None = None
    seconds: float = 0.0  # training time of this epoch so far, for images/s


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


class RungReached(Interrupted):
    """A search's stop request (`TaskPaths.rung`) names this epoch: checkpointed, resume me."""

    def __init__(self, epoch: int):
        Exception.__init__(self, f"stopped after epoch {epoch}, a search's rung")
        self.signum, self.epoch, self.step = 0, epoch, 0


def rung_reached(paths: TaskPaths | GroupPaths, epoch: int) -> bool:
    """Whether a search asked this task to stop after `epoch` (hpcxfer/tune/drive.py); a
    group is never stopped at a rung (a search runs every member alone)."""
    if not isinstance(paths, TaskPaths):
        return False
    try:
        stop = read_json(paths.rung)["stop_after"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: ignored (%s)", paths.rung, e)
        return False
    return isinstance(stop, int) and not isinstance(stop, bool) and epoch >= stop


class Checkpointer:
    """When to save (a time cadence, cheap epoch ends, a stop request), and the shared part
    of what: the position, every random generator, restarts and wall time. `contents()`
    gives the models' part, `restore(state)` puts it back. `paths` is a task's or a group's
    (anything with .checkpoint, .checkpoint_prev and .dir); `identity` is checked on load."""

    def __init__(self, paths: TaskPaths | GroupPaths, identity: dict, gen: torch.Generator, minutes: float,
                 stop: StopFlag | None, contents: Callable[[], dict], restore: Callable[[dict], None]):
        self.paths, self.identity, self.gen, self.stop = paths, identity, gen, stop
        self.contents, self.restore = contents, restore
        self.interval = minutes * 60
        self.last_at = time.monotonic()
        self.cost = 0.0  # seconds the last save took
        self.restarts, self.wall_before = 0, 0.0
        self.began = time.perf_counter()

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.began

    def resume(self) -> Position:
        """Restore the newest checkpoint; its position, or epoch 0."""
        state = checkpoint.load_latest(self.paths, self.identity)
        if state is None:
            return Position(epoch=0)
        self.restore(state)
        checkpoint.set_rng_state(state["rng"], self.gen)
        self.restarts, self.wall_before = state["restarts"] + 1, state["wall_s"]
        pos = Position(epoch=state["epoch"], step=state["step"], order=state["order"], seconds=state["train_s"])
        log.info("resuming %s at epoch %d step %d (restart %d)", self.paths.dir.name, pos.epoch, pos.step,
                 self.restarts)
        return pos

    def save(self, pos: Position) -> None:
        self.cost = checkpoint.save(self.paths, {
            "task": self.identity, **self.contents(),
            "rng": checkpoint.rng_state(self.gen), "epoch": pos.epoch, "step": pos.step, "order": pos.order,
            "train_s": pos.seconds, "restarts": self.restarts, "wall_s": self.wall(),
        })
        self.last_at = time.monotonic()

    def after_step(self, pos: Position) -> None:
        if self.stop:
            self.save(pos)  # a failure here propagates: the task then fails rather than lies
            raise Interrupted(self.stop.signum, pos.epoch, pos.step)
        if time.monotonic() - self.last_at >= self.interval:
            self._try_save(pos)

    def epoch_end(self, pos: Position) -> None:
        if rung_reached(self.paths, pos.epoch):
            self.save(pos)
            raise RungReached(pos.epoch)
        since = time.monotonic() - self.last_at
        if since >= self.interval or self.cost <= CHEAP_SAVE * since:
            self._try_save(pos)

    def _try_save(self, pos: Position) -> None:
        # A full disk or a quota must not kill the work done since the last checkpoint:
        # the previous checkpoint is intact, so warn, train on and try at the next cadence.
        try:
            self.save(pos)
        except OSError as e:
            log.warning("checkpoint of %s at epoch %d step %d failed (%s); keeping the previous one",
                        self.paths.dir.name, pos.epoch, pos.step, e)
            self.last_at = time.monotonic()


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
                if done < first.epochs:
                    ckpt.epoch_end(pos)
                elif keep:
                    ckpt.save(pos)  # the trained models, for whoever asked to keep them
        finally:
            for rec in records:
                rec.close()
    return startup[0] if startup else None


def run(study: StudyPaths, paths: TaskPaths, stop: StopFlag | None = None) -> dict:
    """Train the task in `paths` to completion, resuming from its checkpoint if it has one.

    Returns the result record, which is also written to result.json. Raises Interrupted
    after checkpointing when `stop` is set (a signal arrived).
    """
    config = read_json(paths.config)
    task = Task.from_dict(config)
    runtime = RuntimeSettings.of_config(config, paths.config)
    data = prepare_data(task, config.get("data", {}), runtime)
    learner = prepare_model(task, runtime, study, data)
    gen = torch.Generator().manual_seed(task.seed)
    ckpt = Checkpointer(paths, task.identity(), gen, runtime.checkpoint_minutes, stop,
                        contents=lambda: {"config": config, **learner.state()}, restore=learner.load)
    pos = ckpt.resume()
    records = Records(paths, runtime, pos.epoch)
    startup = fit(Looped([learner], data.precision), data, gen, pos, ckpt, [records], runtime, paths.profile)
    result = finish(paths, learner.task, learner.model, learner.last, run_info(ckpt, startup, data))
    records.hparams(learner.task, result)
    if not runtime.keep_checkpoints:
        checkpoint.remove(paths)
    return result
