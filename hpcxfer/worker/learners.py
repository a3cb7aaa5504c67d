"""What is trained on one stream of batches: the data every model shares (`Data`,
`prepare_data`), one task's model with its optimizer, scaler and running sums (`Learner`,
`prepare_model`), and how the models of one stream step (`Trainer`; `Looped` here, `Fused`
in hpcxfer/worker/fused.py). A task alone is one model; a protocol group's members are
several (hpcxfer/worker/group.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hpcxfer.data import first_per_class, open_dataset, remap, task_subset
from hpcxfer.errors import CheckpointError
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.worker import protocol
from hpcxfer.worker.augment import Normalize, for_evaluation, for_training
from hpcxfer.worker.feed import InMemory, Streamed, StreamOptions, open_feed
from hpcxfer.worker.models import build_model
from hpcxfer.worker.precision import LossScaler, Precision, resolve

PRETRAIN_SEED_OFFSET = 1 << 20


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
    source_weights: str | None = None  # a source model file (task.json's data.source_weights)

    @property
    def device(self) -> torch.device:
        return self.precision.device


@dataclass
class Sums:
    """One model's running sums of an epoch: training loss (float64) and correct predictions."""

    loss: torch.Tensor
    correct: torch.Tensor

    @classmethod
    def zero(cls, device: torch.device) -> Sums:
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
    scaler: LossScaler
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


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def init_seed(task: Task) -> int:
    """The seed of a task's initial weights and dropout. Pre-training draws from another
    stream than fine-tuning: with one seed, a re-initialised layer would start from the
    very weights its source model started from."""
    return task.seed + (PRETRAIN_SEED_OFFSET if task.stage == "pretrain" else 0)


def prepare_data(task: Task, data: dict, runtime: RuntimeSettings) -> Data:
    """The device, precision, class split, subsets and feeds of `task`; a group's members
    share every one of them (docs/design.md §1: the same images in every protocol)."""
    device = pick_device(runtime.device)
    precision = resolve(runtime.amp, runtime.channels_last, device)
    ds = open_dataset(task.dataset, data.get("path"), data)
    classes, train_idx = task_subset(ds.train.labels, ds.num_classes, stage=task.stage, split=task.split,
                                     per_class=task.examples_per_class, paired=bool(task.source))
    val_idx = first_per_class(ds.val.labels, classes, "full", what="validation set")
    budget = runtime.data_memory_gb * 1e9
    workers = runtime.loader_workers
    stream = StreamOptions.from_runtime(runtime)
    train = open_feed(ds.train, train_idx, remap(ds.train.labels[train_idx], classes), device, budget, workers,
                      stream)
    in_memory = train.images.nbytes if isinstance(train, InMemory) else 0
    val = open_feed(ds.val, val_idx, remap(ds.val.labels[val_idx], classes), device, budget - in_memory, workers,
                    stream)
    return Data(precision=precision, train=train, val=val, normalize=Normalize(ds.mean, ds.std, device),
                augment=for_training(ds), view=for_evaluation(ds), num_classes=len(classes), channels=ds.channels,
                source_weights=data.get("source_weights"))


def prepare_model(task: Task, runtime: RuntimeSettings, study: StudyPaths, data: Data,
                  sources: dict[Path, dict] | None = None) -> Learner:
    """`task`'s model, initialised from its seed, layers 1..n transferred from its split's
    pre-trained model, 1..f frozen, and its optimizer groups (h, lr_high, lr_low). Leaves
    torch's global generator where the task's dropout starts. `sources` caches the loaded
    pre-trained models (a group's members share one)."""
    torch.manual_seed(init_seed(task))
    model = build_model(task.arch, data.num_classes, data.channels)
    if task.transfer_layers > 0:
        cache = sources if sources is not None else {}
        weights = source_model(task, study, data, cache)
        protocol.transfer(model, task.arch, cache[weights], task.transfer_layers)
    protocol.freeze(model, task.arch, task.frozen_layers)
    precision = data.precision
    model.to(data.device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    groups = protocol.param_groups(
        model, task.arch, high_lr_layers=task.high_lr_layers, frozen_layers=task.frozen_layers,
        lr_high=task.lr_high, lr_low=task.lr_low, weight_decay=task.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=task.lr_high, momentum=task.momentum)
    return Learner(task=task, model=model, forward=torch.compile(model) if runtime.compile else model,
                   optimizer=optimizer, scaler=precision.scaler(), sums=Sums.zero(data.device))


def source_model(task: Task, study: StudyPaths, data: Data, cache: dict[Path, dict]) -> Path:
    """The file `task` transfers from, loaded into `cache`: its split's pre-trained model, or
    the grid's model file, whose SHA-256 must still be the one in the task's identity."""
    if data.source_weights is None:
        weights = study.task(task.depends_on[0]).weights
        if not weights.is_file():
            raise CheckpointError(f"{weights}: the pre-trained model this task transfers from is missing; "
                                  f"run task {task.depends_on[0]} first")
        if weights not in cache:
            cache[weights] = torch.load(weights, map_location="cpu", weights_only=True)
        return weights
    weights = Path(data.source_weights)
    if weights not in cache:
        blob = weights.read_bytes() if weights.is_file() else b""
        if task.source != f"weights:{hashlib.sha256(blob).hexdigest()}":
            raise CheckpointError(f"{weights}: the source model file is missing or changed since the task was "
                                  "planned (its SHA-256 is part of the task's identity); plan and submit again")
        cache[weights] = protocol.load_source(weights)
    return weights


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
            protocol.train_mode(learner.model, learner.task.arch, learner.task.frozen_layers)

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
