"""The fine-tuning protocol of docs/design.md §1, applied to a real model.

n = transfer_layers: layers 1..n copied from the source model, the rest keep their fresh
    initialisation; h = high_lr_layers: the top h layers start at lr_high, the others at
    lr_low; d = initial_decay_epochs: every group's lr is multiplied by lr_gamma after d
    epochs and then every decay_every epochs; f = frozen_layers: layers 1..f get no
    gradient and no weight decay.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcxfer.worker.models import layer_prefixes, num_units, weight_layers


def transfer(model: nn.Module, arch: str, source_state: dict[str, torch.Tensor], n: int) -> None:
    """Copy the weights and biases of layers 1..n from a source model's state dict."""
    own = model.state_dict()
    for prefix in layer_prefixes(arch)[:n]:
        keys = [k for k in own if k.startswith(prefix)]
        for k in keys:
            if k not in source_state or source_state[k].shape != own[k].shape:
                raise ValueError(f"source model has no matching {k}")
        with torch.no_grad():
            for k in keys:
                own[k].copy_(source_state[k])


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
