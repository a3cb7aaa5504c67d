"""Architectures beyond AlexNet: each declares its transfer units, which cover every
parameter and buffer once; the grid's unit axes are checked against the architecture; a
frozen unit keeps its weights and its batch-norm statistics; a ResNet group's looped
members are their solo runs bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch
from group_study import make_study

from hpcxfer.errors import ConfigError
from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid, protocols
from hpcxfer.worker import EXIT_DONE
from hpcxfer.worker.main import run_task
from hpcxfer.worker.models import ARCHS, build_model, unit_keys
from hpcxfer.worker.protocol import freeze, param_groups, train_mode


@pytest.mark.parametrize("arch", list(ARCHS))
def test_units_cover_every_parameter_and_buffer_once(arch):
    model = build_model(arch, 7, 3)
    keys = unit_keys(model, arch)
    assert len(keys) == protocols.num_units(arch) == len(protocols.UNITS[arch])
    flat = [k for unit in keys for k in unit]
    assert sorted(flat) == sorted(model.state_dict()) and len(flat) == len(set(flat))
    assert model.state_dict()[keys[-1][0]].shape[0] == 7  # the head fits the classes


def test_a_unit_map_that_misses_a_module_is_refused(monkeypatch):
    from hpcxfer.worker import models

    builder, units = models.ARCHS["resnet-narrow"]
    monkeypatch.setitem(models.ARCHS, "resnet-narrow", (builder, ("conv1", *units[1:])))  # bn1 left out
    with pytest.raises(ValueError, match="bn1.* in 0 transfer units"):
        unit_keys(build_model("resnet-narrow", 5, 1), "resnet-narrow")


@pytest.mark.parametrize("f", [1, 3])
def test_freezing_units_keeps_their_weights_and_bn_statistics(f):
    torch.manual_seed(0)
    arch = "resnet-narrow"
    model = build_model(arch, 5, 1)
    freeze(model, arch, f)
    opt = torch.optim.SGD(param_groups(model, arch, high_lr_layers=6, frozen_layers=f, lr_high=0.1, lr_low=0.01,
                                       weight_decay=5e-4), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):  # an epoch of four batches
        train_mode(model, arch, f)
        x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    for i, unit in enumerate(unit_keys(model, arch)):
        for k in unit:
            if i < f:
                assert torch.equal(after[k], before[k]), k
            elif after[k].dtype.is_floating_point or k.endswith("num_batches_tracked"):
                assert not torch.equal(after[k], before[k]), k
    assert any(k.endswith("running_mean") for k in unit_keys(model, arch)[0])


def _resnet(write_grid, **finetune):
    return write_grid({"arch": "resnet-narrow", "experiments": [{"name": "x", **finetune}]})


def test_named_protocols_count_the_architecture_units(write_grid):
    tasks = expand(load_grid(_resnet(write_grid, protocol=["common", "scratch"])))
    fine = {(t.transfer_layers, t.high_lr_layers, t.frozen_layers) for t in tasks if t.stage == "finetune"}
    assert fine == {(5, 6, 0), (0, 6, 0)}
    assert [t.high_lr_layers for t in tasks if t.stage == "pretrain"] == [6]


@pytest.mark.parametrize("finetune, field, words", [
    ({"transfer_layers": 6}, "experiments[0].transfer_layers", "6 is out of range 0..5"),
    ({"high_lr_layers": 7}, "experiments[0].high_lr_layers", "7 is out of range 1..6"),
    ({"transfer_layers": 5, "frozen_layers": 5}, "experiments[0].frozen_layers", "5 is out of range 0..4"),
    ({"protocol": "optimal"}, "experiments[0].protocol", "'optimal' is the paper's Table 2"),
    ({"transfer_layers": 3, "initial_decay_epochs": "optimal"}, "experiments[0].initial_decay_epochs",
     "no such table"),
])
def test_unit_ranges_follow_the_architecture(write_grid, cli, finetune, field, words):
    path = _resnet(write_grid, **finetune)
    with pytest.raises(ConfigError) as err:
        expand(load_grid(path))
    assert err.value.field == field and words in str(err.value)
    out = cli("plan", path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and field in out.stderr


MEMBERS = [
    {"transfer_layers": 0, "high_lr_layers": 6, "initial_decay_epochs": 30},
    {"transfer_layers": 3, "frozen_layers": 2, "high_lr_layers": 1, "initial_decay_epochs": 1},
    {"protocol": "common"},
]


@pytest.mark.slow
def test_resnet_group_members_are_bit_identical_to_solo_runs(tmp_path):
    runtime = {"keep_checkpoints": True, "group_mode": "fused", "tensorboard": False}  # falls back to looped
    solo, pre, members, _ = make_study(tmp_path / "solo", "r", runtime, epochs=2, members=MEMBERS,
                                       arch="resnet-narrow")
    assert run_task(str(solo.dir), pre.task_id) == EXIT_DONE
    for t in members:
        assert run_task(str(solo.dir), t.task_id) == EXIT_DONE
    grouped, _, _, group = make_study(tmp_path / "grouped", "r", runtime, epochs=2, members=MEMBERS,
                                      arch="resnet-narrow")
    shutil.copy(solo.task(pre.task_id).weights, grouped.task(pre.task_id).weights)
    assert run_task(str(grouped.dir), group.group_id) == EXIT_DONE
    stored = torch.load(grouped.group(group.group_id).checkpoint, weights_only=True)["members"]
    for t in members:
        mine, ref = grouped.task(t.task_id), solo.task(t.task_id)
        assert {k: read_json(mine.result)[k] for k in ("val_acc", "val_loss", "train_loss")} == \
            {k: read_json(ref.result)[k] for k in ("val_acc", "val_loss", "train_loss")}
        assert [r["val_loss"] for r in iter_jsonl(mine.metrics)] == [r["val_loss"] for r in iter_jsonl(ref.metrics)]
        ref_weights = torch.load(ref.checkpoint, weights_only=True)["model"]
        assert all(torch.equal(stored[t.task_id]["model"][k], v) for k, v in ref_weights.items()), t.task_id
    frozen = members[1]
    pre_weights = torch.load(solo.task(pre.task_id).weights, weights_only=True)
    mine = stored[frozen.task_id]["model"]
    assert torch.equal(mine["bn1.running_mean"], pre_weights["bn1.running_mean"])  # a frozen unit's statistics
    assert not torch.equal(mine["layer4.0.bn1.running_mean"], pre_weights["layer4.0.bn1.running_mean"])
