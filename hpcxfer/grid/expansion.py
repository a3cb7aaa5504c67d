"""Grid -> tasks. Deterministic: the same grid always gives the same ids. Its one read is
a source model file's SHA-256 (`source.weights`), once an expansion: the file's content is
part of its fine-tuning tasks' identity.

The number of tasks is counted from the axes' lengths before any task is built; a grid
over MAX_TASKS is an error, not a machine out of memory.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from hpcxfer.errors import ConfigError
from hpcxfer.grid import protocols
from hpcxfer.grid.limits import MAX_TASKS
from hpcxfer.grid.protocols import PROTOCOL_FIELDS
from hpcxfer.grid.schema import FINETUNE_DEFAULTS, DataSpec, Grid
from hpcxfer.grid.task import Task

#: Product order of the fine-tuning axes (outermost first).
SETTINGS = ("lr_high", "lr_low", "lr_gamma", "decay_every", "epochs", "batch_size", "momentum",
            "weight_decay", "seed")


def stage_data(grid: Grid, stage: str) -> DataSpec:
    """The data a stage trains on: the source for pre-training in a grid of a separate
    source and target, else `data` (which is the target there)."""
    src = grid.transfer_source
    if stage == "pretrain" and src is not None and src.dataset is not None:
        return DataSpec(**src.model_dump(exclude={"weights"}))
    return grid.data  # type: ignore[return-value]


def task_data(grid: Grid, stage: str) -> dict:
    """task.json's `data`: the stage's data section with absolute paths, and for
    fine-tuning from a model file its path as `source_weights`."""
    data = stage_data(grid, stage).model_dump()
    if data.get("path"):
        data["path"] = str(Path(data["path"]).absolute())
    src = grid.transfer_source
    if stage == "finetune" and src is not None and src.weights is not None:
        data["source_weights"] = str(Path(src.weights).absolute())
    return data


def weights_digest(grid: Grid) -> str:
    """SHA-256 of the grid's source model file (part of its fine-tuning tasks' identity)."""
    path = Path(grid.transfer_source.weights)  # type: ignore[union-attr,arg-type]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise ConfigError(grid._source, "source.weights", f"{path}: cannot read the model file "
                          f"({e.strerror or e})") from None
    return digest.hexdigest()


def source_of(grid: Grid) -> str:
    """A task's `source` field (hpcxfer/grid/task.py): empty for one data set split in two."""
    src = grid.transfer_source
    if src is None:
        return ""
    if src.weights is not None:
        return f"weights:{weights_digest(grid)}"
    fields = stage_data(grid, "pretrain").task_fields()
    return f"data:{src.dataset}" + (f":{fields['image_size']}/{fields['crop']}" if fields else "")


def pretrain_splits(grid: Grid, splits: set[int]) -> list[int]:
    """The splits that have a pre-training task: each split's in the paper's setting; one
    (split 0) for a source data set, which is pre-trained whole; none for a model file."""
    src = grid.transfer_source
    if src is None:
        return sorted(splits)
    return [0] if src.dataset is not None else []


def pretrain_task(grid: Grid, split: int, source: str = "") -> Task:
    p = grid.pretrain
    data = stage_data(grid, "pretrain")
    return Task(
        stage="pretrain", arch=grid.arch, dataset=data.dataset, split=split, source=source,
        examples_per_class=p.examples_per_class, transfer_layers=0,
        high_lr_layers=protocols.num_units(grid.arch), lr_high=p.lr, lr_low=p.lr,
        initial_decay_epochs=p.decay_every, frozen_layers=0, lr_gamma=p.lr_gamma,
        decay_every=p.decay_every, epochs=p.epochs, batch_size=p.batch_size, momentum=p.momentum,
        weight_decay=p.weight_decay, seed=p.seed, **data.task_fields(),
    ).with_id()


def blocks(grid: Grid) -> list[tuple[str, dict]]:
    """(name, axes) for each sub-grid: the `finetune` block, or each experiment over it."""
    base = grid.finetune.model_dump(exclude_none=True)
    if not grid.experiments:
        return [("finetune", base)]
    out = []
    for i, exp in enumerate(grid.experiments):
        own = exp.model_dump(exclude_none=True)
        name = own.pop("name", None) or f"experiments[{i}]"
        merged = dict(base)
        if "protocol" in own or any(f in own for f in PROTOCOL_FIELDS):
            # An experiment that chooses its protocol replaces the base's choice whole.
            for f in ("protocol", *PROTOCOL_FIELDS):
                merged.pop(f, None)
        merged.update(own)
        out.append((name, merged))
    return out


def block_size(axes: dict) -> int:
    """Fine-tuning tasks of one sub-grid before de-duplication: the product of its axes."""
    axes = {**FINETUNE_DEFAULTS, **axes}
    if "protocol" in axes:
        choices = len(axes["protocol"])
    else:
        choices = math.prod(len(axes.get(f, [None])) for f in PROTOCOL_FIELDS)
    return len(axes["split"]) * len(axes["examples_per_class"]) * choices * math.prod(len(axes[s]) for s in SETTINGS)


def check_size(grid: Grid, named: list[tuple[str, dict]]) -> None:
    """Refuse a grid of more than MAX_TASKS tasks, counted without building one."""
    sizes = [block_size(axes) for _, axes in named]
    splits = {s for _, axes in named for s in axes.get("split", FINETUNE_DEFAULTS["split"])}
    total = sum(sizes) + len(splits)
    if total > MAX_TASKS:
        biggest = max(range(len(named)), key=lambda i: sizes[i])
        where = "finetune" if not grid.experiments else f"experiments[{biggest}]"
        raise ConfigError(grid._source, where, f"expands to {total:,} tasks ({named[biggest][0]!s:.40}: "
                          f"{sizes[biggest]:,}); at most {MAX_TASKS:,} in one study, split it into several")


def check_units(grid: Grid, named: list[tuple[str, dict]]) -> None:
    """Refuse a unit count outside the architecture's range, or `optimal` where Table 2
    does not apply, naming the sub-grid's field."""
    bounds = protocols.ranges(grid.arch)
    u = protocols.num_units(grid.arch)
    for i, (_, axes) in enumerate(named):
        where = "finetune" if not grid.experiments else f"experiments[{i}]"
        wants_optimal = "optimal" in axes.get("protocol", ()) or any(
            "optimal" in axes.get(f, ()) for f in PROTOCOL_FIELDS)
        if wants_optimal and grid.arch not in protocols.TABLE2_ARCHS:
            field = "protocol" if "optimal" in axes.get("protocol", ()) else next(
                f for f in PROTOCOL_FIELDS if "optimal" in axes.get(f, ()))
            try:
                protocols.optimal("full", grid.arch)
            except ValueError as e:
                raise ConfigError(grid._source, f"{where}.{field}", str(e)) from None
        for f, (lo, hi) in bounds.items():
            for v in axes.get(f, ()):
                if v != "optimal" and not lo <= v <= hi:
                    raise ConfigError(grid._source, f"{where}.{f}", f"{v} is out of range {lo}..{hi} "
                                      f"({grid.arch} has {u} transfer units)")


def _protocol_choices(axes: dict, arch: str) -> list:
    if "protocol" in axes:
        return [("named", name) for name in axes["protocol"]]
    default = protocols.common(arch)
    lists = [axes.get(f, [default[f]]) for f in PROTOCOL_FIELDS]
    return [("fields", combo) for combo in itertools.product(*lists)]


def _resolve(choice: tuple, size: int | str, arch: str) -> dict:
    kind, value = choice
    if kind == "named":
        return protocols.resolve(value, size, arch)
    if "optimal" not in value:
        return dict(zip(PROTOCOL_FIELDS, value))
    best = protocols.optimal(size, arch)
    return {f: (best[f] if v == "optimal" else v) for f, v in zip(PROTOCOL_FIELDS, value)}


def expand_block(grid: Grid, name: str, axes: dict, pretrain: dict[int, Task], source: str = "") -> list[Task]:
    axes = {**FINETUNE_DEFAULTS, **axes}
    where = "finetune" if name == "finetune" else f"experiments {name!r}"
    data_fields = grid.data.task_fields()
    tasks = []
    for split, size, choice, *settings in itertools.product(
        axes["split"], axes["examples_per_class"], _protocol_choices(axes, grid.arch),
        *(axes[s] for s in SETTINGS),
    ):
        proto = _resolve(choice, size, grid.arch)
        if proto["frozen_layers"] > proto["transfer_layers"]:
            raise ConfigError(
                grid._source, f"{where}.frozen_layers",
                f"frozen_layers {proto['frozen_layers']} > transfer_layers "
                f"{proto['transfer_layers']} at {size} per class; only transferred layers can be frozen",
            )
        values = dict(zip(SETTINGS, settings))
        # Every fine-tuning task depends on its split's pre-training (docs/design.md §1),
        # scratch included, so that a study's stages stay simple to schedule and count; a
        # source data set has one pre-training, a model file none.
        pre = pretrain.get(split if not grid.paired else 0)
        tasks.append(Task(
            stage="finetune", arch=grid.arch, dataset=grid.data.dataset, split=split,
            examples_per_class=size, **proto, **values, **data_fields, source=source,
            depends_on=(pre.task_id,) if pre is not None else (),
        ).with_id())
    return tasks


def expand_by_block(grid: Grid) -> list[tuple[str, list[Task]]]:
    """Each sub-grid's fine-tuning tasks (before de-duplication across sub-grids)."""
    named = blocks(grid)
    check_size(grid, named)
    check_units(grid, named)
    splits = {s for _, axes in named for s in axes.get("split", FINETUNE_DEFAULTS["split"])}
    source = source_of(grid)
    pretrain = {s: pretrain_task(grid, s, source) for s in pretrain_splits(grid, splits)}
    return [(name, expand_block(grid, name, axes, pretrain, source)) for name, axes in named]


@dataclass(frozen=True)
class Expansion:
    """A grid expanded once: every task (as `expand` gives them) and each sub-grid's
    fine-tuning tasks (as `expand_by_block` does), for callers that need both."""

    tasks: list[Task]
    blocks: list[tuple[str, list[Task]]]


def expand_study(grid: Grid) -> Expansion:
    """The grid's tasks and its sub-grids' tasks, from one expansion."""
    by_block = expand_by_block(grid)
    finetune = list({t.task_id: t for _, ts in by_block for t in ts}.values())
    splits = pretrain_splits(grid, {t.split for t in finetune})
    source = source_of(grid) if splits else ""  # a model file (no pre-training) is read once
    return Expansion([pretrain_task(grid, s, source) for s in splits] + finetune, by_block)


def expand(grid: Grid) -> list[Task]:
    """Every task of the grid, pre-training first, each once, in a stable order."""
    return expand_study(grid).tasks
