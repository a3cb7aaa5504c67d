"""One task, start to finish: data -> model -> protocol -> epochs -> records.

A plain loop with explicit arguments, in pieces that a protocol group (hpcxfer/worker/
group.py) shares with a task run alone: `prepare_data` builds what every model trained on
one stream of batches shares, `prepare_model` one model with its optimizer, `fit` runs the
epochs of one or more models over that stream (`Looped` steps them one after another),
`Checkpointer` resumes from the newest checkpoint, checkpoints on a time cadence and at
cheap epoch ends, and on a stop request checkpoints at the next step and raises
`Interrupted`. `run` ties them to a task's files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
import torch
from torch import nn

from hpcxfer.data import class_split, first_per_class, open_dataset, remap
from hpcxfer.errors import CheckpointError
from hpcxfer.fileio import read_json
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.worker import checkpoint, protocol
from hpcxfer.worker.augment import Normalize, for_evaluation, for_training
from hpcxfer.worker.feed import InMemory, Streamed, open_feed
from hpcxfer.worker.models import build_model
from hpcxfer.worker.observe import process_age, profiler
from hpcxfer.worker.precision import Precision, resolve
from hpcxfer.worker.records import Records, finish, run_info
from hpcxfer.worker.signals import Interrupted, StopFlag

log = logging.getLogger(__name__)

EVAL_BATCH = 1024
PRETRAIN_SEED_OFFSET = 1 << 20
#: An epoch end is "cheap" to checkpoint when the last save took at most this share of
#: the time since the save before it.
CHEAP_SAVE = 0.05


@dataclass
class Data:
    """What every model trained on one stream of batches shares: device and precision, the
    decoded (or streamed) images, the transforms."""

    precision: Precision
    train: InMemory | Streamed
    val: InMemory | Streamed
    normalize: Normalize
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    view: Callable[[torch.Tensor], torch.Tensor]
    num_classes: int
    channels: int

    @property
    def device(self) -> torch.device:
        return self.precision.device


@dataclass
class Sums:
    """One model's running sums of an epoch: training loss (float64) and correct predictions."""

    loss: torch.Tensor
    correct: torch.Tensor

    @classmethod
    def zero(cls, device: torch.device) -> "Sums":
        return cls(torch.zeros((), device=device, dtype=torch.float64),
                   torch.zeros((), device=device, dtype=torch.long))

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (out.argmax(1) == y).sum()

    def stats(self, n: int) -> dict:
        return {"train_loss": self.loss.item() / n, "train_acc": self.correct.item() / n}


@dataclass
class Learner:
    """One model and what steps it: a task's own weights, optimizer, gradient scaler, the
    running sums of the epoch in progress and the last metrics record."""

    task: Task
    model: nn.Module  # the module whose state is saved
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sums: Sums
    last: dict = field(default_factory=dict)

    def state(self) -> dict:
        """This model's part of a checkpoint."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "loss_sum": self.sums.loss.detach().cpu(),
                "correct": self.sums.correct.detach().cpu(), "last": self.last}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        device = self.sums.loss.device
        self.sums = Sums(state["loss_sum"].to(device, copy=True), state["correct"].to(device, copy=True))
        self.last = state["last"]

    def set_epoch(self, epoch: int) -> dict[str, float]:
        """The rates of the 0-based `epoch` (the protocol's decay), set and returned."""
        t = self.task
        factor = protocol.lr_factor(epoch, initial_decay_epochs=t.initial_decay_epochs,
                                    decay_every=t.decay_every, lr_gamma=t.lr_gamma)
        return protocol.set_epoch_lr(self.optimizer, factor)


@dataclass
class Position:
    """Where the loop is: the epoch in progress (= epochs completed), the steps done in it,
    its data order and its training seconds so far. A mid-epoch checkpoint stores all of
    it, with each model's running sums."""

    epoch: int
    step: int = 0
    order: torch.Tensor | None = None
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


def prepare_data(task: Task, data: dict, runtime: dict) -> Data:
    """The device, precision, class split, subsets and feeds of `task`; a group's members
    share every one of them (docs/design.md §1: the same images in every protocol)."""
    device = pick_device(runtime.get("device", "auto"))
    precision = resolve(runtime.get("amp", "auto"), runtime.get("channels_last", True), device)
    ds = open_dataset(task.dataset, data.get("path"), data)
    source, target = class_split(ds.num_classes, task.split)
    classes = source if task.stage == "pretrain" else target
    train_idx = first_per_class(ds.train.labels, classes, task.examples_per_class)
    val_idx = first_per_class(ds.val.labels, classes, "full", what="validation set")
    budget = float(runtime.get("data_memory_gb", 8.0)) * 1e9
    workers = int(runtime.get("loader_workers", 4))
    train = open_feed(ds.train, train_idx, remap(ds.train.labels[train_idx], classes), device, budget, workers)
    in_memory = train.images.nbytes if isinstance(train, InMemory) else 0
    val = open_feed(ds.val, val_idx, remap(ds.val.labels[val_idx], classes), device, budget - in_memory, workers)
    return Data(precision=precision, train=train, val=val, normalize=Normalize(ds.mean, ds.std, device),
                augment=for_training(ds), view=for_evaluation(ds), num_classes=len(classes), channels=ds.channels)


def prepare_model(task: Task, runtime: dict, study: StudyPaths, data: Data,
                  sources: dict[Path, dict] | None = None) -> Learner:
    """`task`'s model, initialised from its seed, layers 1..n transferred from its split's
    pre-trained model, 1..f frozen, and its optimizer groups (h, lr_high, lr_low). Leaves
    torch's global generator where the task's dropout starts. `sources` caches the loaded
    pre-trained models (a group's members share one)."""
    torch.manual_seed(init_seed(task))
    model = build_model(task.arch, data.num_classes, data.channels)
    if task.transfer_layers > 0:
        weights = study.task(task.depends_on[0]).weights
        if not weights.is_file():
            raise CheckpointError(f"{weights}: the pre-trained model this task transfers from is missing; "
                                  f"run task {task.depends_on[0]} first")
        cache = sources if sources is not None else {}
        if weights not in cache:
            cache[weights] = torch.load(weights, map_location="cpu", weights_only=True)
        protocol.transfer(model, task.arch, cache[weights], task.transfer_layers)
    protocol.freeze(model, task.arch, task.frozen_layers)
    precision = data.precision
    model.to(data.device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    groups = protocol.param_groups(
        model, task.arch, high_lr_layers=task.high_lr_layers, frozen_layers=task.frozen_layers,
        lr_high=task.lr_high, lr_low=task.lr_low, weight_decay=task.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=task.lr_high, momentum=task.momentum)
    return Learner(task=task, model=model, forward=torch.compile(model) if runtime.get("compile") else model,
                   optimizer=optimizer, scaler=precision.scaler(), sums=Sums.zero(data.device))


def step(learner: Learner, precision: Precision, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step of one model on one batch."""
    with precision.autocast():
        out = learner.forward(x)
        loss = nn.functional.cross_entropy(out.float(), y)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.sums.add(loss, out, y)


class Trainer:
    """The models trained on one stream of batches, and how they step and predict on a
    batch: `Looped` here, `Fused` in hpcxfer/worker/fused.py."""

    def __init__(self, learners: Sequence[Learner], precision: Precision):
        self.learners, self.precision = list(learners), precision

    def train(self) -> None:
        for learner in self.learners:
            learner.model.train()

    def eval(self) -> None:
        for learner in self.learners:
            learner.model.eval()

    def set_epoch(self, epoch: int) -> list[dict[str, float]]:
        """Each model's rates for the 0-based `epoch`."""
        return [learner.set_epoch(epoch) for learner in self.learners]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step of every model on the batch."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Iterable[torch.Tensor]:
        """Every model's output on the batch."""
        raise NotImplementedError

    def sync(self) -> None:
        """Leave each model's whole state in its own module, optimizer and scaler (what a
        checkpoint saves); they hold it already unless a subclass keeps it elsewhere."""


def global_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's global generators, which dropout draws from (CUDA's on a GPU)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_global_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class Looped(Trainer):
    """The models step one after another on each batch, each exactly as it would alone.

    Dropout draws from torch's global generator: it is rewound before each model, so
    every model draws the masks its own run would (models of one architecture draw the
    same amount), and after the last one it is where a run alone would leave it.
    """

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        rng = global_rng(self.precision.device)
        for learner in self.learners:
            set_global_rng(rng, self.precision.device)
            step(learner, self.precision, x, y)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [learner.forward(x) for learner in self.learners]


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
        records: Sequence[Records], runtime: dict, profile_dir: Path) -> float | None:
    """Train every model of `trainer` from `pos` to the end of its task's epochs (shared:
    one group's members have the same epochs, batch size and stream), one metrics record
    per model and evaluation. Returns the seconds from process start to the first step."""
    first = trainer.learners[0].task
    startup: list[float] = []
    eval_every = int(runtime.get("eval_every", 1))
    keep = bool(runtime.get("keep_checkpoints", False))
    with profiler(profile_dir, bool(runtime.get("profile")), data.device.type == "cuda") as prof:
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
    runtime = config.get("runtime", {})
    data = prepare_data(task, config.get("data", {}), runtime)
    learner = prepare_model(task, runtime, study, data)
    gen = torch.Generator().manual_seed(task.seed)
    ckpt = Checkpointer(paths, task.identity(), gen, float(runtime.get("checkpoint_minutes", 5.0)), stop,
                        contents=lambda: {"config": config, **learner.state()}, restore=learner.load)
    pos = ckpt.resume()
    records = Records(paths, runtime, pos.epoch)
    startup = fit(Looped([learner], data.precision), data, gen, pos, ckpt, [records], runtime, paths.profile)
    result = finish(paths, learner.task, learner.model, learner.last, run_info(ckpt, startup, data))
    if not runtime.get("keep_checkpoints", False):
        checkpoint.remove(paths)
    return result
