"""What a task writes as it trains, alone or as a member of a protocol group: one metrics
record per evaluation (metrics.jsonl and TensorBoard scalars), progress.json at every
epoch end, then result.json
(docs/design.md §3). One code path for both, so a member's records are its solo run's.
"""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from hpcxfer.fileio import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    iter_jsonl,
    read_json,
    rewrite_jsonl,
)
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.task import Task
from hpcxfer.layout import TaskPaths
from hpcxfer.results import METRICS
from hpcxfer.worker.env import environment
from hpcxfer.worker.observe import Scalars

#: What a task's TensorBoard HParams entry holds: its protocol, size and split, and the
#: settings a grid may vary (docs/design.md §1), with the final metrics of its result.
HPARAMS = ("stage", "transfer_layers", "high_lr_layers", "initial_decay_epochs", "frozen_layers", "lr_high",
           "lr_low", "examples_per_class", "split", "seed", "epochs", "batch_size", "arch", "dataset")

if TYPE_CHECKING:
    from hpcxfer.worker.checkpoint import Checkpointer
    from hpcxfer.worker.learners import Data


class Records:
    """A task's metrics records from `resume_epoch` on. A resumed task never leaves two
    records for one epoch: what its checkpoint does not cover (records written after it,
    and a torn last line) is dropped on opening, and TensorBoard purges the same."""

    def __init__(self, paths: TaskPaths, runtime: RuntimeSettings, resume_epoch: int):
        self.paths = paths
        kept = [r for r in iter_jsonl(paths.metrics) if r.get("epoch", 0) <= resume_epoch]
        rewrite_jsonl(paths.metrics, kept)
        self.scalars = Scalars(paths.tensorboard, runtime.tensorboard, resume_epoch)

    def add(self, record: dict) -> None:
        append_jsonl(self.paths.metrics, record)
        self.scalars.record(record)

    def progress(self, epoch: int, epochs: int) -> None:
        """progress.json: epochs completed of `epochs`, at every epoch end (evaluated or not),
        for whoever watches the task between its evaluations."""
        atomic_write_json(self.paths.progress, {"epoch": epoch, "epochs": epochs, "time": time.time()})

    def finished(self) -> None:
        """The task's result is written: its progress and interruption counts, which the
        result holds now, leave the folder as it was before either existed."""
        self.paths.progress.unlink(missing_ok=True)
        self.paths.interruptions.unlink(missing_ok=True)

    def close(self) -> None:
        self.scalars.close()

    def hparams(self, task: Task, result: dict) -> None:
        """The finished task's HParams entry (TensorBoard), beside its scalars."""
        self.scalars.hparams({k: getattr(task, k) for k in HPARAMS},
                             {k: result[k] for k in METRICS if isinstance(result.get(k), (int, float))})


def run_info(ckpt: Checkpointer, startup_s: float | None, data: Data) -> dict:
    """What a result says about the run that produced it (shared by a group's members)."""
    return {"restarts": ckpt.restarts, "wall_s": ckpt.wall(), "startup_s": startup_s,
            "precision": data.precision.name, "data_path": data.train.kind, **environment(data.device)}


def finish(paths: TaskPaths, task: Task, model: nn.Module, last: dict, info: dict) -> dict:
    """Write a trained task's result.json (and a pre-training's model.pt, before it: the
    result says the weights are there). Returns the result."""
    if task.stage == "pretrain":
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
        atomic_write_bytes(paths.weights, buf.getvalue())
    result = {
        "task_id": task.task_id, "stage": task.stage,
        "val_acc": last["val_acc"], "val_loss": last["val_loss"],
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "epochs": task.epochs, **info, "interruptions": interruptions(paths),
    }
    atomic_write_json(paths.result, result)
    return result


def interruptions(paths: TaskPaths) -> int:
    """How often the task's workers stopped before it finished: exits 75 (a stop request,
    checkpointed) and workers that died holding the task (killed). `restarts` counts the
    checkpoints resumed from, which a kill before the first checkpoint does not add to."""
    try:
        return int(read_json(paths.interruptions)["interruptions"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def count_interruption(paths: TaskPaths) -> None:
    """One more interruption in the task's interruptions.json; a failed write is a warning."""
    try:
        atomic_write_json(paths.interruptions, {"interruptions": interruptions(paths) + 1})
    except OSError as e:
        logging.getLogger(__name__).warning("could not write %s: %s", paths.interruptions, e.strerror or e)
