"""A task: one resolved training run, identified by a hash of its content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

STAGES = ("pretrain", "finetune")
#: A folder data set's stored image size and the model's input size when the grid does not
#: say (`data.image_size`, `data.crop`; hpcxfer/data/folders.py).
IMAGE_SIZE, CROP = 256, 224
#: Identity fields left out of a task's hash while they hold these values, so that the ids
#: of tasks from before the fields existed stay what they were.
QUIET_DEFAULTS = {"image_size": IMAGE_SIZE, "crop": CROP, "source": ""}
#: What a task id looks like: a readable prefix and a hash (`ft-s0-x10-n7h8d30f0-1a2b3c4d5e`).
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")


@dataclass(frozen=True)
class Task:
    """Every field that decides the outcome of one training run (docs/design.md §1 names).

    A pre-training task is the same kind of run with n = 0, every layer at `lr_high`,
    the first decay after `decay_every` epochs and the full source half as its data.

    `image_size` and `crop` change what a folder data set's model sees, so they are part of
    the identity; they enter it (and the id's hash) only where they differ from
    `QUIET_DEFAULTS`, so a grid that leaves them alone keeps the ids it had before they
    were fields. Array data sets (CIFAR, Fashion-MNIST) ignore them; expansion leaves them
    at their defaults there (hpcxfer/grid/schema.py `DataSpec.task_fields`).

    `source` is empty in the paper's setting (one data set, `split` choosing its halves).
    A grid with a separate source and target sets it: `data:NAME[:SIZE/CROP]` for a source
    data set the study pre-trains on (all its classes), `weights:SHA256` for a model file.
    There `dataset` is the data the task trains on (the source for pre-training, the target
    for fine-tuning, all classes of each) and a fine-tuning task's `split` is the replicate:
    the seed of its target subset's draw (hpcxfer/data/splits.py `drawn_per_class`).
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
    image_size: int = IMAGE_SIZE
    crop: int = CROP
    source: str = ""
    depends_on: tuple[str, ...] = ()
    task_id: str = field(default="", compare=False)

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("task_id")
        d["depends_on"] = list(self.depends_on)
        for name, default in QUIET_DEFAULTS.items():
            if d[name] == default:
                del d[name]
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

    def with_id(self) -> Task:
        return dataclasses.replace(self, task_id=f"{self.readable_prefix()}-{self.content_hash()}")

    def to_dict(self) -> dict:
        d = self.identity()
        d["task_id"] = self.task_id
        return d

    @classmethod
    def from_record(cls, d: object) -> Task:
        """A task read from disk (tasks.jsonl), every field checked: ValueError names the
        first field that is missing or of the wrong kind."""
        if not isinstance(d, dict):
            raise ValueError(f"not a JSON object ({type(d).__name__})")  # noqa: TRY004 - the documented contract
        for name, kind in _KINDS.items():
            if name not in d:
                if name in OPTIONAL:
                    continue
                raise ValueError(f"no {name!r}")
            if not _KIND_CHECK[kind](d[name]):
                raise ValueError(f"{name} is {json.dumps(d[name])[:40]}, not {kind}")
        if not TASK_ID.fullmatch(d["task_id"]):
            raise ValueError(f"task_id {d['task_id'][:40]!r} is not a task id")
        if d["stage"] not in STAGES:
            raise ValueError(f"stage {d['stage'][:40]!r} is not one of {', '.join(STAGES)}")
        if any(not TASK_ID.fullmatch(dep) for dep in d.get("depends_on") or ()):
            raise ValueError("depends_on names something that is not a task id")
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["depends_on"] = tuple(kw.get("depends_on") or ())
        return cls(**kw)


def _int(v: object) -> bool:
    return type(v) is int


def finite_number(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


_KIND_CHECK = {
    "a string": lambda v: type(v) is str,
    "an integer": _int,
    "a number": finite_number,
    "an integer or 'full'": lambda v: _int(v) or v == "full",
    "a list of task ids": lambda v: type(v) is list and all(type(x) is str for x in v),
}
#: The kind of every field of a task record.
_KINDS = {
    "task_id": "a string", "stage": "a string", "arch": "a string", "dataset": "a string",
    "split": "an integer", "examples_per_class": "an integer or 'full'", "transfer_layers": "an integer",
    "high_lr_layers": "an integer", "lr_high": "a number", "lr_low": "a number",
    "initial_decay_epochs": "an integer", "frozen_layers": "an integer", "lr_gamma": "a number",
    "decay_every": "an integer", "epochs": "an integer", "batch_size": "an integer", "momentum": "a number",
    "weight_decay": "a number", "seed": "an integer", "depends_on": "a list of task ids",
    "image_size": "an integer", "crop": "an integer", "source": "a string",
}
#: Fields a task record may leave out (their defaults).
OPTIONAL = ("depends_on", *QUIET_DEFAULTS)

#: What a search's candidate is (hpcxfer/tune/): the fields its members differ in (the
#: replicate), and the field each search runs within (the target size).
MEMBER_FIELDS = ("split", "seed")
SIZE_FIELD = "examples_per_class"
_NOT_CANDIDATE = {*MEMBER_FIELDS, SIZE_FIELD, "depends_on"}


def candidate_key(task: Task) -> str:
    """A fine-tuning task's candidate, named stably across runs: its fields other than its
    size and replicate."""
    ident = task.identity()
    return ",".join(f"{k}={ident[k]}" for k in sorted(ident) if k not in _NOT_CANDIDATE)
