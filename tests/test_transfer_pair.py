"""A separate source and target, and a source model from a file: what the grid expands to,
how a target subset is drawn, the model file's checks (each bad file one line, exit 2,
nothing written) and a fine-tuning that starts from the file."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_GRID, merge, prepare_study

from hpcxfer.data import drawn_per_class
from hpcxfer.data.digits import write_digits
from hpcxfer.errors import ConfigError
from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.worker import EXIT_DONE
from hpcxfer.worker.main import run_task
from hpcxfer.worker.models import build_model, unit_keys


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(folder)
    return folder


def _pair(tmp_path, digits, source: dict, **over) -> dict:
    target = {"dataset": "folders", "path": str(digits), "image_size": 28, "crop": 28,
              "index_cache": str(tmp_path / "index")}
    return merge(TINY_GRID, {"data": None, "source": source, "target": target, "arch": "resnet-narrow",
                             "root": str(tmp_path / "runs"), "runtime": {"tensorboard": False},
                             "experiments": [{"name": "x", "protocol": ["scratch", "common"]}], **over})


def _write(tmp_path, grid: dict, name: str = "pair.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_source_data_set_is_pretrained_once_for_every_replicate(tmp_path, digits):
    grid = _pair(tmp_path, digits, {"dataset": "fashion-mnist"},
                 finetune={**TINY_GRID["finetune"], "split": [0, 1]})
    tasks = expand(load_grid(_write(tmp_path, grid)))
    (pre,) = [t for t in tasks if t.stage == "pretrain"]
    fine = [t for t in tasks if t.stage == "finetune"]
    assert (pre.dataset, pre.source, pre.split, pre.image_size) == ("fashion-mnist", "data:fashion-mnist", 0, 256)
    assert {(t.dataset, t.source, t.depends_on, t.image_size) for t in fine} == \
        {("folders", "data:fashion-mnist", (pre.task_id,), 28)}
    assert sorted(t.split for t in fine) == [0, 0, 1, 1]
    same_split = expand(load_grid(_write(tmp_path, merge(TINY_GRID, {"root": str(tmp_path / "runs")}), "s.yaml")))
    assert not {t.task_id for t in tasks} & {t.task_id for t in same_split}


def test_target_subsets_are_nested_per_replicate_and_differ_between_them():
    labels = np.repeat(np.arange(3), 40)
    small, large = (drawn_per_class(labels, [0, 1, 2], k, 0) for k in (5, 20))
    assert set(small) <= set(large) and len(small) == 15 and len(large) == 60
    assert set(drawn_per_class(labels, [0, 1, 2], 5, 1)) != set(small)
    assert np.array_equal(np.bincount(labels[small]), [5, 5, 5])


def _weights(path, arch="resnet-narrow", classes=7, channels=3, **tweak):
    torch.manual_seed(5)
    state = build_model(arch, classes, channels).state_dict()
    state.update(tweak)
    torch.save(state, path)
    return path


def test_a_model_file_replaces_pretraining_and_its_hash_is_identity(tmp_path, digits):
    weights = _weights(tmp_path / "model.pt")
    grid = _pair(tmp_path, digits, {"weights": str(weights)})
    first = expand(load_grid(_write(tmp_path, grid)))
    assert {t.stage for t in first} == {"finetune"} and all(not t.depends_on for t in first)
    assert all(t.source.startswith("weights:") and len(t.source) == 8 + 64 for t in first)
    _weights(weights, classes=9)  # another head: another file
    again = expand(load_grid(_write(tmp_path, grid)))
    assert [t.readable_prefix() for t in again] == [t.readable_prefix() for t in first]
    assert not {t.task_id for t in again} & {t.task_id for t in first}


def test_a_missing_model_file_is_one_line_at_plan(tmp_path, digits, cli):
    path = _write(tmp_path, _pair(tmp_path, digits, {"weights": str(tmp_path / "absent.pt")}))
    with pytest.raises(ConfigError, match="absent.pt: cannot read the model file") as err:
        expand(load_grid(path))
    assert err.value.field == "source.weights"
    out = cli("plan", path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "source.weights" in out.stderr


class NotTensors:
    pass


@pytest.mark.parametrize("bad, words", [
    ("shape", "layer2.0.conv1.weight of shape (32, 99, 3, 3)"),
    ("pickle", "not a state dict torch.load reads with weights_only=True"),
    ("list", "holds a list, not a state dict"),
    ("one-class", "1 class in the target's training set"),
])
def test_a_bad_model_file_or_target_is_one_line_and_writes_nothing(tmp_path, digits, cli, bad, words):
    weights, target = tmp_path / "model.pt", digits
    if bad == "shape":
        _weights(weights, **{"layer2.0.conv1.weight": torch.zeros(32, 99, 3, 3)})
    elif bad == "pickle":
        weights.write_bytes(pickle.dumps({"fc.weight": NotTensors()}))
    elif bad == "list":
        torch.save([torch.zeros(1)], weights)
    else:
        _weights(weights)
        target = tmp_path / "one"
        for part in ("train", "val"):
            shutil.copytree(digits / part / "3", target / part / "3")
    grid = _pair(tmp_path, target, {"weights": str(weights)})
    out = cli("submit", _write(tmp_path, grid), "--backend", "local")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and ("source.weights" in lines[0] or "target" in lines[0])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_fine_tuning_from_a_model_file_keeps_frozen_units_as_the_file_holds_them(tmp_path, digits):
    weights = _weights(tmp_path / "model.pt", channels=1)  # grey weights, spread over the RGB target
    grid = _pair(tmp_path, digits, {"weights": str(weights)}, experiments=[
        {"name": "frozen", "transfer_layers": 4, "frozen_layers": 4, "high_lr_layers": 2}],
        runtime={"tensorboard": False, "keep_checkpoints": True})
    paths = prepare_study(_write(tmp_path, grid))
    (task,) = expand(load_grid(tmp_path / "pair.yaml"))
    assert run_task(str(paths.dir), task.task_id) == EXIT_DONE
    tp = paths.task(task.task_id)
    assert 0 <= read_json(tp.result)["val_acc"] <= 1
    trained = torch.load(tp.checkpoint, weights_only=True)["model"]
    source = torch.load(weights, weights_only=True)
    keys = unit_keys(build_model("resnet-narrow", 10, 3), "resnet-narrow")
    assert torch.equal(trained["conv1.weight"], source["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    for k in keys[0][1:] + keys[1] + keys[2] + keys[3]:  # units 1..4: weights and batch-norm statistics
        assert torch.equal(trained[k], source[k]), k
    assert not torch.equal(trained["layer4.0.bn1.running_mean"], source["layer4.0.bn1.running_mean"])


def test_a_model_file_changed_after_submit_is_refused_by_the_worker(tmp_path, digits):
    weights = _weights(tmp_path / "model.pt")
    paths = prepare_study(_write(tmp_path, _pair(tmp_path, digits, {"weights": str(weights)}, experiments=[
        {"name": "common", "protocol": "common"}])))
    (task,) = expand(load_grid(tmp_path / "pair.yaml"))
    _weights(weights, classes=9)  # replaced after the study was written
    assert run_task(str(paths.dir), task.task_id) != EXIT_DONE
    failed = read_json(paths.task(task.task_id).failed)
    assert "changed since the task was planned" in json.dumps(failed)
    assert not paths.task(task.task_id).result.exists()
