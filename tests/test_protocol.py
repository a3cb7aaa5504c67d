"""The protocol on a real model: what is copied, re-initialised, frozen, and at which lr."""

from __future__ import annotations

import pytest
import torch

from hpcxfer.worker import protocol
from hpcxfer.worker.models import build_model, weight_layers

ARCH = "alexnet-narrow"


def _state(layer):
    return [p.detach().clone() for p in layer.parameters()]


@pytest.mark.parametrize("n", [0, 3, 7])
def test_transfer_copies_layers_up_to_n_and_leaves_the_rest_fresh(n):
    torch.manual_seed(1)
    source = build_model(ARCH, 5, 1)
    torch.manual_seed(2)
    model = build_model(ARCH, 5, 1)
    protocol.transfer(model, ARCH, source.state_dict(), n)
    for i, (mine, theirs) in enumerate(zip(weight_layers(model, ARCH), weight_layers(source, ARCH))):
        same = all(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters()))
        assert same == (i < n), f"layer {i + 1}"


def test_full_alexnet_layer_map():
    model = build_model("alexnet", 500, 3)
    layers = weight_layers(model, "alexnet")
    assert [type(m).__name__ for m in layers] == ["Conv2d"] * 5 + ["Linear"] * 3
    assert [m.out_channels for m in layers[:5]] == [64, 192, 384, 256, 256]
    assert layers[-1].out_features == 500


@pytest.mark.parametrize("h, f", [(1, 0), (8, 0), (3, 2), (1, 6), (8, 5)])
def test_groups_and_freezing(h, f):
    model = build_model(ARCH, 5, 1)
    protocol.freeze(model, ARCH, f)
    groups = protocol.param_groups(model, ARCH, high_lr_layers=h, frozen_layers=f,
                                   lr_high=0.01, lr_low=0.001, weight_decay=5e-4)
    layers = weight_layers(model, ARCH)
    in_group = {id(p): g["name"] for g in groups for p in g["params"]}
    for i, layer in enumerate(layers, start=1):
        for p in layer.parameters():
            if i <= f:
                assert not p.requires_grad and id(p) not in in_group, f"layer {i} must be frozen"
            else:
                assert p.requires_grad
                assert in_group[id(p)] == ("high" if i > 8 - h else "low"), f"layer {i}"
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates.get("high") == 0.01
    if h + f < 8:
        assert rates["low"] == 0.001


@pytest.mark.parametrize("d, expected", [
    (0, [0.1, 0.1, 0.01, 0.01, 0.001]),
    (1, [1, 0.1, 0.1, 0.01, 0.01]),
    (3, [1, 1, 1, 0.1, 0.1]),
    (30, [1, 1, 1, 1, 1]),
])
def test_lr_factor_decays_after_d_then_every_k(d, expected):
    got = [protocol.lr_factor(e, initial_decay_epochs=d, decay_every=2, lr_gamma=0.1) for e in range(5)]
    assert got == pytest.approx(expected)
