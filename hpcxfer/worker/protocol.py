"""The fine-tuning protocol of docs/design.md §1, applied to a real model.

n = transfer_layers: layers 1..n copied from the source model, the rest keep their fresh
    initialisation; h = high_lr_layers: the top h layers start at lr_high, the others at
    lr_low; d = initial_decay_epochs: every group's lr is multiplied by lr_gamma after d
    epochs and then every decay_every epochs; f = frozen_layers: layers 1..f get no
    gradient and no weight decay.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hpcxfer.errors import DataError
from hpcxfer.grid.task import Task
from hpcxfer.worker.models import build_model, num_units, unit_keys, weight_layers

if TYPE_CHECKING:
    from hpcxfer.grid.schema import Grid  # pydantic, which a worker never imports


def load_source(path: Path) -> dict[str, torch.Tensor]:
    """A source model file: a state dict read with weights_only=True. ValueError (OSError
    for an unreadable file) when it is not a mapping of names to tensors."""
    try:
        with warnings.catch_warnings():  # torch warns of old pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        lines = str(e).splitlines() or [type(e).__name__]
        why = next((line.strip() for line in lines if "Unsupported" in line), lines[0])
        raise ValueError(f"{path}: not a state dict torch.load reads with weights_only=True "
                         f"({why[:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict (names to tensors)")
    return state


def _adapted(key: str, mine: torch.Tensor, theirs: torch.Tensor, first_conv: str) -> torch.Tensor | None:
    """The source tensor for `key`, or None where it does not fit. The first convolution
    alone adapts its input channels (timm's adapt_input_conv): RGB weights summed for a
    grey input, grey weights spread over RGB (w / 3 each), so a grey image gives the
    same response either way."""
    if theirs.shape == mine.shape:
        return theirs
    if key != first_conv or theirs.dim() != 4 or theirs.shape[:1] + theirs.shape[2:] != mine.shape[:1] + mine.shape[2:]:
        return None
    if theirs.shape[1] == 3 and mine.shape[1] == 1:
        return theirs.sum(1, keepdim=True)
    if theirs.shape[1] == 1 and mine.shape[1] == 3:
        return theirs.repeat(1, 3, 1, 1) / 3
    return None


def transfer(model: nn.Module, arch: str, source_state: dict[str, torch.Tensor], n: int) -> None:
    """Copy units 1..n (weights, biases, batch-norm statistics) from a source model's state
    dict; ValueError naming the first key the source lacks or holds in another shape."""
    own = model.state_dict()
    first_conv = next((k for k, v in own.items() if v.dim() == 4), "")
    keys = [k for unit in unit_keys(model, arch)[:n] for k in unit]
    picked = {}
    for k in keys:
        theirs = source_state.get(k)
        fit = None if theirs is None else _adapted(k, own[k], theirs, first_conv)
        if fit is None:
            have = "no " + k if theirs is None else f"{k} of shape {tuple(theirs.shape)}"
            raise ValueError(f"the source model has {have}; {arch} needs {tuple(own[k].shape)}")
        picked[k] = fit
    with torch.no_grad():
        for k, v in picked.items():
            own[k].copy_(v)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze(model: nn.Module, arch: str, f: int) -> None:
    for layer in weight_layers(model, arch)[:f]:
        for p in layer.parameters():
            p.requires_grad_(False)


def train_mode(model: nn.Module, arch: str, f: int) -> None:
    """Training mode, except the batch normalisation of frozen units 1..f, which stays in
    evaluation mode: a frozen unit keeps its running statistics as well as its weights
    (docs/design.md §1)."""
    model.train()
    for layer in weight_layers(model, arch)[:f]:
        for m in layer.modules():
            if isinstance(m, BATCH_NORMS):
                m.eval()


def param_groups(model: nn.Module, arch: str, *, high_lr_layers: int, frozen_layers: int,
                 lr_high: float, lr_low: float, weight_decay: float) -> list[dict]:
    """Optimizer groups `low` (units f+1..U-h) and `high` (the top h units, minus frozen).

    Frozen layers are left out of the optimizer entirely: no update and no weight decay.
    Each group carries `initial_lr`, the rate the schedule multiplies.
    """
    layers = weight_layers(model, arch)
    first_high = num_units(arch) - high_lr_layers  # 0-based index of the lowest high-lr unit
    groups = {"low": [], "high": []}
    for i, layer in enumerate(layers):
        if i < frozen_layers:
            continue
        groups["high" if i >= first_high else "low"].extend(layer.parameters())
    rates = {"low": lr_low, "high": lr_high}
    return [
        {"name": name, "params": params, "lr": rates[name], "initial_lr": rates[name],
         "weight_decay": weight_decay}
        for name, params in groups.items() if params
    ]


def check_inputs(grid: Grid, tasks: list[Task]) -> None:
    """Before anything is written: each stage's data (hpcxfer/data `check_data`), and a
    source model file, which must be a state dict that fits the architecture for the
    target (every unit but the head, which is replaced to fit the target's classes)."""
    from hpcxfer.data import check_data
    from hpcxfer.grid.expansion import stage_data

    if not grid.paired:
        check_data(grid.source, grid.data, tasks)
        return
    for stage in sorted({t.stage for t in tasks}):
        ds = check_data(grid.source, stage_data(grid, stage), [t for t in tasks if t.stage == stage], grid)
        src = grid.transfer_source
        if stage != "finetune" or src is None or src.weights is None:
            continue
        try:
            state = load_source(Path(src.weights))
            transfer(build_model(grid.arch, ds.num_classes, ds.channels), grid.arch, state, num_units(grid.arch) - 1)
        except OSError as e:
            raise DataError(grid.source, "source.weights", f"{src.weights}: cannot read ({e.strerror or e})") from None
        except ValueError as e:
            message = str(e) if str(src.weights) in str(e) else f"{src.weights}: {e}"
            raise DataError(grid.source, "source.weights", message) from None


def lr_factor(epoch: int, *, initial_decay_epochs: int, decay_every: int, lr_gamma: float) -> float:
    """Multiplier of every group's initial lr during 0-based `epoch`.

    d = 0 means the rates are decayed from the first epoch on.
    """
    if epoch < initial_decay_epochs:
        return 1.0
    return lr_gamma ** (1 + (epoch - initial_decay_epochs) // decay_every)


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> dict[str, float]:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return {f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}
