"""One task, start to finish: data -> model -> protocol -> epochs -> records.

A plain loop with explicit arguments: `prepare` builds everything a task needs,
`train_one_epoch` and `evaluate` do one pass each, `run` ties them to the task's files:
it resumes from the newest checkpoint, checkpoints on a time cadence and at cheap epoch
ends, and on a stop request checkpoints at the next step and raises `Interrupted`.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from hpcxfer.data import class_split, first_per_class, open_dataset, remap
from hpcxfer.errors import CheckpointError
from hpcxfer.fileio import append_jsonl, atomic_write_bytes, atomic_write_json, iter_jsonl, read_json, rewrite_jsonl
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths, TaskPaths
from hpcxfer.worker import checkpoint, protocol
from hpcxfer.worker.augment import Normalize, for_evaluation, for_training
from hpcxfer.worker.env import environment
from hpcxfer.worker.feed import InMemory, Streamed, StreamOptions, open_feed
from hpcxfer.worker.models import build_model
from hpcxfer.worker.observe import Scalars, process_age, profiler
from hpcxfer.worker.precision import Precision, resolve
from hpcxfer.worker.signals import Interrupted, StopFlag

log = logging.getLogger(__name__)

EVAL_BATCH = 1024
PRETRAIN_SEED_OFFSET = 1 << 20
#: An epoch end is "cheap" to checkpoint when the last save took at most this share of
#: the time since the save before it.
CHEAP_SAVE = 0.05


@dataclass
class Prepared:
    task: Task
    model: nn.Module  # the module whose state is saved
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    train: InMemory | Streamed
    val: InMemory | Streamed
    normalize: Normalize
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    view: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device


@dataclass
class Position:
    """Where the loop is: the epoch in progress (= epochs completed), the steps done in it,
    its data order and the running sums of its training loss. A mid-epoch checkpoint
    stores all of it."""

    epoch: int
    step: int = 0
    order: torch.Tensor | None = None
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    seconds: float = 0.0  # training time of this epoch so far, for images/s


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def init_seed(task: Task) -> int:
    """The seed of a task's initial weights and dropout. Pre-training draws from another
    stream than fine-tuning: with one seed, a re-initialised layer would start from the
    very weights its source model started from."""
    return task.seed + (PRETRAIN_SEED_OFFSET if task.stage == "pretrain" else 0)


def prepare(task: Task, data: dict, runtime: dict, study: StudyPaths) -> Prepared:
    device = pick_device(runtime.get("device", "auto"))
    precision = resolve(runtime.get("amp", "auto"), runtime.get("channels_last", True), device)
    torch.manual_seed(init_seed(task))
    ds = open_dataset(task.dataset, data.get("path"), data)
    source, target = class_split(ds.num_classes, task.split)
    classes = source if task.stage == "pretrain" else target
    train_idx = first_per_class(ds.train.labels, classes, task.examples_per_class)
    val_idx = first_per_class(ds.val.labels, classes, "full", what="validation set")

    model = build_model(task.arch, len(classes), ds.channels)
    if task.transfer_layers > 0:
        weights = study.task(task.depends_on[0]).weights
        if not weights.is_file():
            raise CheckpointError(f"{weights}: the pre-trained model this task transfers from is missing; "
                                  f"run task {task.depends_on[0]} first")
        source_state = torch.load(weights, map_location="cpu", weights_only=True)
        protocol.transfer(model, task.arch, source_state, task.transfer_layers)
    protocol.freeze(model, task.arch, task.frozen_layers)
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    groups = protocol.param_groups(
        model, task.arch, high_lr_layers=task.high_lr_layers, frozen_layers=task.frozen_layers,
        lr_high=task.lr_high, lr_low=task.lr_low, weight_decay=task.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=task.lr_high, momentum=task.momentum)

    budget = float(runtime.get("data_memory_gb", 8.0)) * 1e9
    workers = int(runtime.get("loader_workers", 4))
    stream = StreamOptions.from_runtime(runtime)
    train = open_feed(ds.train, train_idx, remap(ds.train.labels[train_idx], classes), device, budget, workers,
                      stream)
    in_memory = train.images.nbytes if isinstance(train, InMemory) else 0
    val = open_feed(ds.val, val_idx, remap(ds.val.labels[val_idx], classes), device, budget - in_memory, workers,
                    stream)
    return Prepared(
        task=task, model=model, forward=torch.compile(model) if runtime.get("compile") else model,
        optimizer=optimizer, scaler=precision.scaler(), precision=precision, train=train, val=val,
        normalize=Normalize(ds.mean, ds.std, device), augment=for_training(ds), view=for_evaluation(ds),
        device=device,
    )


def train_one_epoch(p: Prepared, gen: torch.Generator, pos: Position,
                    after_step: Callable[[Position], None] = lambda pos: None) -> dict:
    """The rest of epoch `pos.epoch` from step `pos.step`, in an order drawn from `gen` at
    the epoch's start; `after_step` runs after every step (checkpoints, stop requests).
    Returns the epoch's training loss, accuracy and images/s."""
    p.model.train()
    n = len(p.train)
    if pos.order is None:
        pos.order = torch.randperm(n, generator=gen)
    loss_sum = pos.loss_sum.to(p.device)
    correct = pos.correct.to(p.device)
    seconds_before, start = pos.seconds, time.perf_counter()
    for x, y in p.train.batches(pos.order, p.task.batch_size, pos.step):
        x = p.precision.images(p.normalize(p.augment(x, gen)))
        with p.precision.autocast():
            out = p.forward(x)
            loss = nn.functional.cross_entropy(out.float(), y)
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.scale(loss).backward()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        pos.step += 1
        pos.loss_sum, pos.correct = loss_sum, correct
        pos.seconds = seconds_before + time.perf_counter() - start
        after_step(pos)
    seconds = seconds_before + time.perf_counter() - start
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
            "images_per_s": n / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate(p: Prepared) -> dict:
    p.model.eval()
    n = len(p.val)
    loss_sum = torch.zeros((), device=p.device, dtype=torch.float64)
    correct = torch.zeros((), device=p.device, dtype=torch.long)
    for x, y in p.val.batches(torch.arange(n), EVAL_BATCH):
        with p.precision.autocast():
            out = p.forward(p.precision.images(p.normalize(p.view(x))))
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    return {"val_loss": loss_sum.item() / n, "val_acc": correct.item() / n}


class Checkpointer:
    """When to save, and what: on a time cadence, at cheap epoch ends and on request."""

    def __init__(self, p: Prepared, paths: TaskPaths, gen: torch.Generator, config: dict,
                 minutes: float, stop: StopFlag | None):
        self.p, self.paths, self.gen, self.config, self.stop = p, paths, gen, config, stop
        self.interval = minutes * 60
        self.last_at = time.monotonic()
        self.cost = 0.0  # seconds the last save took
        self.restarts, self.wall_before, self.last_record = 0, 0.0, {}
        self.began = time.perf_counter()

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.began

    def resume(self) -> Position:
        """Restore the newest checkpoint into the prepared task; its position, or epoch 0."""
        state = checkpoint.load_latest(self.paths, self.p.task.identity())
        if state is None:
            return Position(epoch=0)
        self.p.model.load_state_dict(state["model"])
        self.p.optimizer.load_state_dict(state["optimizer"])
        self.p.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"], self.gen)
        self.restarts, self.wall_before, self.last_record = state["restarts"] + 1, state["wall_s"], state["last"]
        pos = Position(epoch=state["epoch"], step=state["step"], order=state["order"],
                       loss_sum=state["loss_sum"], correct=state["correct"], seconds=state["train_s"])
        log.info("resuming %s at epoch %d step %d (restart %d)", self.p.task.task_id, pos.epoch, pos.step,
                 self.restarts)
        return pos

    def save(self, pos: Position) -> None:
        p = self.p
        self.cost = checkpoint.save(self.paths, {
            "task": p.task.identity(), "config": self.config,
            "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(), "scaler": p.scaler.state_dict(),
            "rng": checkpoint.rng_state(self.gen), "epoch": pos.epoch, "step": pos.step, "order": pos.order,
            "loss_sum": pos.loss_sum.detach().cpu(), "correct": pos.correct.detach().cpu(), "train_s": pos.seconds,
            "restarts": self.restarts, "wall_s": self.wall(), "last": self.last_record,
        })
        self.last_at = time.monotonic()

    def after_step(self, pos: Position) -> None:
        if self.stop:
            self.save(pos)  # a failure here propagates: the task then fails rather than lies
            raise Interrupted(self.stop.signum, pos.epoch, pos.step)
        if time.monotonic() - self.last_at >= self.interval:
            self._try_save(pos)

    def epoch_end(self, pos: Position) -> None:
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
                        self.p.task.task_id, pos.epoch, pos.step, e)
            self.last_at = time.monotonic()


def run(study: StudyPaths, paths: TaskPaths, stop: StopFlag | None = None) -> dict:
    """Train the task in `paths` to completion, resuming from its checkpoint if it has one.

    Returns the result record, which is also written to result.json. Raises Interrupted
    after checkpointing when `stop` is set (a signal arrived).
    """
    config = read_json(paths.config)
    task = Task.from_dict(config)
    runtime = config.get("runtime", {})
    p = prepare(task, config.get("data", {}), runtime, study)
    gen = torch.Generator().manual_seed(task.seed)
    ckpt = Checkpointer(p, paths, gen, config, float(runtime.get("checkpoint_minutes", 5.0)), stop)
    pos = ckpt.resume()
    # A resumed task never leaves two records for one epoch: drop what the checkpoint
    # does not cover (records written after it, and a torn last line).
    kept = [r for r in iter_jsonl(paths.metrics) if r.get("epoch", 0) <= pos.epoch]
    rewrite_jsonl(paths.metrics, kept)

    scalars = Scalars(paths.tensorboard, bool(runtime.get("tensorboard", True)), pos.epoch)
    startup: list[float] = []
    eval_every = int(runtime.get("eval_every", 1))
    keep = bool(runtime.get("keep_checkpoints", False))
    with profiler(paths.profile, bool(runtime.get("profile")), p.device.type == "cuda") as prof:
        def after_step(at: Position) -> None:
            if not startup:
                startup.append(process_age())
                log.info("first step %.2f s after process start", startup[0])
            prof.step()
            ckpt.after_step(at)

        try:
            while pos.epoch < task.epochs:
                factor = protocol.lr_factor(pos.epoch, initial_decay_epochs=task.initial_decay_epochs,
                                            decay_every=task.decay_every, lr_gamma=task.lr_gamma)
                lrs = protocol.set_epoch_lr(p.optimizer, factor)
                stats = train_one_epoch(p, gen, pos, after_step)
                done = pos.epoch + 1
                if done % eval_every == 0 or done == task.epochs:
                    ckpt.last_record = {"epoch": done, **stats, **evaluate(p), **lrs, "wall_s": ckpt.wall()}
                    append_jsonl(paths.metrics, ckpt.last_record)
                    scalars.record(ckpt.last_record)
                pos = Position(epoch=done)
                if done < task.epochs:
                    ckpt.epoch_end(pos)
                elif keep:
                    ckpt.save(pos)  # the trained model, for whoever asked to keep it
        finally:
            scalars.close()

    if task.stage == "pretrain":
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in p.model.state_dict().items()}, buf)
        atomic_write_bytes(paths.weights, buf.getvalue())
    last = ckpt.last_record
    result = {
        "task_id": task.task_id, "stage": task.stage,
        "val_acc": last["val_acc"], "val_loss": last["val_loss"],
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "epochs": task.epochs, "restarts": ckpt.restarts, "wall_s": ckpt.wall(),
        "startup_s": startup[0] if startup else None, "precision": p.precision.name, "data_path": p.train.kind,
        **environment(p.device),
    }
    atomic_write_json(paths.result, result)
    if not keep:
        checkpoint.remove(paths)
    return result
