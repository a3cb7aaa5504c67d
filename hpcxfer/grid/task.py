"""A task: one resolved training run, identified by a hash of its content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

STAGES = ("pretrain", "finetune")


@dataclass(frozen=True)
class Task:
    """Every field that decides the outcome of one training run (SPEC section 1 names).

    A pre-training task is the same kind of run with n = 0, every layer at `lr_high`,
    the first decay after `decay_every` epochs and the full source half as its data.
    """

    stage: str
    arch: str
    dataset: str
    split: int
    examples_per_class: int | str
    transfer_layers: int
    high_lr_layers: int
    lr_high: float
    lr_low: float
    initial_decay_epochs: int
    frozen_layers: int
    lr_gamma: float
    decay_every: int
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    seed: int
    depends_on: tuple[str, ...] = ()
    task_id: str = field(default="", compare=False)

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("task_id")
        d["depends_on"] = list(self.depends_on)
        return d

    def content_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def readable_prefix(self) -> str:
        if self.stage == "pretrain":
            return f"pt-s{self.split}"
        return (
            f"ft-s{self.split}-x{self.examples_per_class}-n{self.transfer_layers}"
            f"h{self.high_lr_layers}d{self.initial_decay_epochs}f{self.frozen_layers}"
        )

    def with_id(self) -> "Task":
        return dataclasses.replace(self, task_id=f"{self.readable_prefix()}-{self.content_hash()}")

    def to_dict(self) -> dict:
        d = self.identity()
        d["task_id"] = self.task_id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["depends_on"] = tuple(kw.get("depends_on") or ())
        return cls(**kw)
