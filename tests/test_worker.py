"""The worker on real data: what it trains, what it leaves alone, and what it records."""

from __future__ import annotations

import pytest
import torch

from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker.main import run_task
from hpcxfer.worker.models import build_model, layer_prefixes

pytestmark = pytest.mark.slow  # trains a real pre-training and fine-tuning: a minute or more on two cores

ARCH = "alexnet-narrow"


@pytest.fixture
def study(write_grid):
    grid = load_grid(write_grid({
        "finetune": {"epochs": 4, "decay_every": 2, "examples_per_class": [10]},
        "experiments": [{"transfer_layers": 5, "frozen_layers": 3, "high_lr_layers": 2,
                         "initial_decay_epochs": 1, "lr_high": 0.05, "lr_low": 0.002}],
    }))
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    return paths, tasks


def _layers(state: dict, k: int) -> dict:
    prefix = layer_prefixes(ARCH)[k - 1]
    return {key: v for key, v in state.items() if key.startswith(prefix)}


def test_pretrain_then_finetune_follows_the_protocol(study):
    paths, (pre, fine) = study
    assert run_task(str(paths.dir), "0") == 0  # by index
    source = torch.load(paths.task(pre.task_id).weights, weights_only=True)
    assert source[layer_prefixes(ARCH)[-1] + "weight"].shape[0] == 5  # fc8: the 5 source classes

    ft = paths.task(fine.task_id)
    cfg = read_json(ft.config)
    cfg["runtime"]["keep_checkpoints"] = True  # to look at the trained weights
    from hpcxfer.fileio import atomic_write_json
    atomic_write_json(ft.config, cfg)
    assert run_task(str(paths.dir), fine.task_id) == 0
    trained = torch.load(ft.checkpoint, weights_only=True)["model"]

    fresh = build_model(ARCH, 5, 1).state_dict()
    for k in range(1, 9):
        mine, src = _layers(trained, k), _layers(source, k)
        equal_source = all(torch.equal(mine[key], src[key]) for key in mine)
        if k <= 3:
            assert equal_source, f"frozen layer {k} changed"
        else:
            assert not equal_source, f"layer {k} was not trained or not re-initialised"
        if k > 5:
            # re-initialised, not copied: far from the source even after a few steps
            assert not any(torch.allclose(mine[key], src[key], atol=1e-3) for key in mine if key.endswith("weight"))
    assert set(fresh) == set(trained)

    records = list(iter_jsonl(ft.metrics))
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    # d = 1, decay every 2 epochs, gamma 0.1: epoch 1 at the initial rates, 2-3 x0.1, 4 x0.01
    assert [r["lr_high"] for r in records] == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    assert [r["lr_low"] for r in records] == pytest.approx([0.002, 0.0002, 0.0002, 0.00002])
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "wall_s"):
        assert all(isinstance(r[key], float) for r in records), key

    result = read_json(ft.result)
    assert result["val_acc"] == records[-1]["val_acc"] and result["val_loss"] == records[-1]["val_loss"]
    assert result["epochs"] == 4 and result["restarts"] == 0
    assert 0.0 <= result["val_acc"] <= 1.0
    for key in ("host", "device", "versions", "wall_s", "train_loss", "train_acc"):
        assert key in result
    assert result["versions"]["torch"] == torch.__version__


def test_finetune_without_its_pretraining_fails_clearly(study):
    paths, (pre, fine) = study
    assert run_task(str(paths.dir), fine.task_id) == 2
    failed = read_json(paths.task(fine.task_id).failed)
    assert "pre-trained model" in failed["error"] and pre.task_id in failed["error"]
