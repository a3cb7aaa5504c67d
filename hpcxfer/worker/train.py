"""One task, start to finish: data -> model -> protocol -> epochs -> records.

A plain loop with explicit arguments: `prepare` builds everything a task needs,
`train_one_epoch` and `evaluate` do one pass each, `run` ties them to the task's files.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Callable

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
from hpcxfer.worker.models import build_model

log = logging.getLogger(__name__)

EVAL_BATCH = 1024
PRETRAIN_SEED_OFFSET = 1 << 20


@dataclass
class Prepared:
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    normalize: Normalize
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    view: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device


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
    model.to(device)
    groups = protocol.param_groups(
        model, task.arch, high_lr_layers=task.high_lr_layers, frozen_layers=task.frozen_layers,
        lr_high=task.lr_high, lr_low=task.lr_low, weight_decay=task.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=task.lr_high, momentum=task.momentum)

    return Prepared(
        task=task, model=model, optimizer=optimizer,
        x_train=ds.train.load(train_idx).to(device),
        y_train=torch.from_numpy(remap(ds.train.labels[train_idx], classes)).to(device),
        x_val=ds.val.load(val_idx).to(device),
        y_val=torch.from_numpy(remap(ds.val.labels[val_idx], classes)).to(device),
        normalize=Normalize(ds.mean, ds.std, device),
        augment=for_training(ds),
        view=for_evaluation(ds),
        device=device,
    )


def train_one_epoch(p: Prepared, gen: torch.Generator) -> dict:
    """One pass over the training set in a fresh random order; returns loss, acc, images/s."""
    p.model.train()
    n = len(p.y_train)
    order = torch.randperm(n, generator=gen)
    loss_sum = torch.zeros((), device=p.device)
    correct = torch.zeros((), device=p.device, dtype=torch.long)
    start = time.perf_counter()
    for i in range(0, n, p.task.batch_size):
        idx = order[i:i + p.task.batch_size].to(p.device)
        x = p.normalize(p.augment(p.x_train[idx], gen))
        y = p.y_train[idx]
        out = p.model(x)
        loss = nn.functional.cross_entropy(out, y)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
            "images_per_s": n / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def evaluate(p: Prepared) -> dict:
    p.model.eval()
    n = len(p.y_val)
    loss_sum = torch.zeros((), device=p.device)
    correct = torch.zeros((), device=p.device, dtype=torch.long)
    for i in range(0, n, EVAL_BATCH):
        out = p.model(p.normalize(p.view(p.x_val[i:i + EVAL_BATCH])))
        y = p.y_val[i:i + EVAL_BATCH]
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    return {"val_loss": loss_sum.item() / n, "val_acc": correct.item() / n}


def _rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run(study: StudyPaths, paths: TaskPaths) -> dict:
    """Train the task in `paths` to completion, resuming from its checkpoint if it has one.

    Returns the result record, which is also written to result.json.
    """
    config = read_json(paths.config)
    task = Task.from_dict(config)
    runtime = config.get("runtime", {})
    p = prepare(task, config.get("data", {}), runtime, study)
    gen = torch.Generator().manual_seed(task.seed)
    identity = task.identity()

    start_epoch, restarts, wall_before, last = 0, 0, 0.0, {}
    state = checkpoint.load_latest(paths, identity)
    if state is not None:
        p.model.load_state_dict(state["model"])
        p.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], gen)
        start_epoch, restarts = state["epoch"], state["restarts"] + 1
        wall_before, last = state["wall_s"], state["last"]
        log.info("resuming %s at epoch %d (restart %d)", task.task_id, start_epoch, restarts)
    # A resumed task never leaves two records for one epoch: drop what the checkpoint
    # does not cover (records written after it, and a torn last line).
    kept = [r for r in iter_jsonl(paths.metrics) if r.get("epoch", 0) <= start_epoch]
    rewrite_jsonl(paths.metrics, kept)

    eval_every = int(runtime.get("eval_every", 1))
    began = time.perf_counter()
    for epoch in range(start_epoch, task.epochs):
        factor = protocol.lr_factor(epoch, initial_decay_epochs=task.initial_decay_epochs,
                                    decay_every=task.decay_every, lr_gamma=task.lr_gamma)
        lrs = protocol.set_epoch_lr(p.optimizer, factor)
        stats = train_one_epoch(p, gen)
        done = epoch + 1
        if done % eval_every == 0 or done == task.epochs:
            last = {"epoch": done, **stats, **evaluate(p), **lrs,
                    "wall_s": wall_before + time.perf_counter() - began}
            append_jsonl(paths.metrics, last)
        checkpoint.save(paths, {
            "task": identity, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
            "rng": _rng_state(gen), "epoch": done, "restarts": restarts,
            "wall_s": wall_before + time.perf_counter() - began, "last": last,
        })

    wall = wall_before + time.perf_counter() - began
    if task.stage == "pretrain":
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in p.model.state_dict().items()}, buf)
        atomic_write_bytes(paths.weights, buf.getvalue())
    result = {
        "task_id": task.task_id, "stage": task.stage,
        "val_acc": last["val_acc"], "val_loss": last["val_loss"],
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "epochs": task.epochs, "restarts": restarts, "wall_s": wall,
        **environment(p.device),
    }
    atomic_write_json(paths.result, result)
    if not runtime.get("keep_checkpoints", False):
        checkpoint.remove(paths)
    return result
