"""Checkpoint files under damage and a full disk; removal on completion; the streamed path.

The unit tests write real checkpoints with `checkpoint.save`; the run tests train a real
small pre-training task in this process.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
import yaml
from conftest import TINY_GRID, StopAfter, merge

from hpcxfer.errors import CheckpointError
from hpcxfer.fileio import atomic_write_json, iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.layout import TaskPaths
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker import checkpoint, train
from hpcxfer.worker.signals import Interrupted

IDENTITY = {"stage": "pretrain", "seed": 0}


def _state(step: int) -> dict:
    return {"task": IDENTITY, "step": step, "model": {"w": torch.full((1000,), float(step))}}


@pytest.fixture
def saved(tmp_path) -> TaskPaths:
    """A task folder with two checkpoints: step 1 (previous) and step 2 (newest)."""
    paths = TaskPaths(tmp_path / "task")
    paths.dir.mkdir()
    checkpoint.save(paths, _state(1))
    checkpoint.save(paths, _state(2))
    return paths


def test_newest_is_loaded(saved):
    assert checkpoint.load_latest(saved, IDENTITY)["step"] == 2
    assert checkpoint.load_latest(TaskPaths(saved.dir.parent / "never"), IDENTITY) is None


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_newest_falls_back_to_the_previous(saved, damage, caplog):
    data = saved.checkpoint.read_bytes()
    if damage == "truncated":
        saved.checkpoint.write_bytes(data[: len(data) // 2])
    else:
        mid = len(data) // 2
        saved.checkpoint.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:])
    with caplog.at_level(logging.WARNING, logger="hpcxfer.worker.checkpoint"):
        state = checkpoint.load_latest(saved, IDENTITY)
    assert state["step"] == 1
    assert "checkpoint.pt is unusable" in caplog.text


def test_both_damaged_is_an_error_not_a_fresh_start(saved):
    saved.checkpoint.write_bytes(b"")
    saved.checkpoint_prev.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="every checkpoint is unusable"):
        checkpoint.load_latest(saved, IDENTITY)


def test_another_config_is_refused(saved):
    with pytest.raises(CheckpointError, match="different task config"):
        checkpoint.load_latest(saved, {**IDENTITY, "seed": 1})


def _disk_full_for_checkpoints(monkeypatch):
    """Writes to a checkpoint's temporary file fail with ENOSPC after half the data, as on a
    full disk: the failure reaches the same code a real one would."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return Full(f) if ".checkpoint.pt.new." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.dir.iterdir()}
    _disk_full_for_checkpoints(monkeypatch)
    with pytest.raises(OSError) as e:
        checkpoint.save(saved, _state(3))
    assert e.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in saved.dir.iterdir()} == before  # no temporary file left
    assert checkpoint.load_latest(saved, IDENTITY)["step"] == 2


# ---------------------------------------------------------------- a real task, in process
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A small pre-training task (100 images, 7 steps an epoch, 2 epochs, evaluated at the
    end) and its uninterrupted result."""
    root = tmp_path_factory.mktemp("ckpt")
    grid_file = root / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(merge(TINY_GRID, {
        "root": str(root / "runs"),
        "pretrain": {"epochs": 2, "batch_size": 16, "examples_per_class": 20},
        "experiments": [{"protocol": ["common"]}],
        "runtime": {"tensorboard": False, "eval_every": 2}})))
    grid = load_grid(grid_file)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    tp = paths.task(tasks[0].task_id)
    config = read_json(tp.config)
    reference = train.run(paths, tp)
    return paths, tp, config, reference, list(iter_jsonl(tp.metrics)), sorted(p.name for p in tp.dir.iterdir())


def _fresh(tp: TaskPaths, config: dict, **runtime) -> None:
    """The task folder as submitted, with these runtime settings."""
    for p in tp.dir.iterdir():
        p.unlink()
    atomic_write_json(tp.config, {**config, "runtime": {**config["runtime"], **runtime}})


EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")


@pytest.mark.slow  # trains (the `task` fixture)
def test_checkpoints_removed_on_completion_unless_kept_and_model_kept(task):
    paths, tp, config, reference, _, left = task
    assert left == ["metrics.jsonl", "model.pt", "result.json", "task.json"]
    _fresh(tp, config, keep_checkpoints=True)
    again = train.run(paths, tp)
    assert again["val_loss"] == reference["val_loss"]
    kept = torch.load(tp.checkpoint, weights_only=True)
    assert kept["epoch"] == 2 and kept["step"] == 0 and kept["config"]["runtime"]["keep_checkpoints"]
    assert all(torch.equal(kept["model"][k], v) for k, v in torch.load(tp.weights, weights_only=True).items())


@pytest.mark.slow  # trains
def test_a_full_disk_mid_run_loses_nothing(task, monkeypatch, caplog):
    paths, tp, config, reference, _, _ = task
    _fresh(tp, config, checkpoint_minutes=1e-6)  # try to checkpoint after every step
    _disk_full_for_checkpoints(monkeypatch)
    with caplog.at_level(logging.WARNING):
        result = train.run(paths, tp)
    assert "No space left on device" in caplog.text
    assert {k: result[k] for k in EXACT} == {k: reference[k] for k in EXACT}
    assert not list(tp.dir.glob(".*.tmp")) and not tp.checkpoint.exists()


@pytest.mark.slow  # trains
def test_streamed_path_equals_memory_and_resumes_exactly(task):
    paths, tp, config, reference, ref_metrics, _ = task
    # after an epoch's last step (before its end), and mid-epoch in the second epoch
    for stop_at, where in ((7, (0, 7)), (10, (1, 3))):
        _fresh(tp, config, data_memory_gb=0, loader_workers=2, checkpoint_minutes=60)
        with pytest.raises(Interrupted):
            train.run(paths, tp, StopAfter(stop_at))
        state = torch.load(tp.checkpoint, weights_only=True)
        assert (state["epoch"], state["step"]) == where
        result = train.run(paths, tp)
        assert result["data_path"] == "stream" and result["restarts"] == 1
        assert {k: result[k] for k in EXACT} == {k: reference[k] for k in EXACT}, stop_at
        assert list(iter_jsonl(tp.metrics))[0]["val_loss"] == ref_metrics[0]["val_loss"]


@pytest.mark.slow  # trains
def test_tensorboard_scalars_and_profiler_trace(task):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths, tp, config, reference, _, _ = task
    _fresh(tp, config, tensorboard=True, profile=True)
    result = train.run(paths, tp)
    assert result["val_loss"] == reference["val_loss"]  # observing changes nothing
    events = EventAccumulator(str(tp.tensorboard))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(2, pytest.approx(result["val_loss"]))]
    assert {"train/loss", "train/acc", "val/acc", "lr/high", "run/images_per_s", "run/wall_s"} <= \
        set(events.Tags()["scalars"])
    assert not [t for t in events.Tags()["scalars"] if t.split("/")[1].startswith(t.split("/")[0])]  # no "val/val_acc"
    # the HParams entry, in the task's own run folder (no sub-run): protocol, size, split, final metrics
    assert [p for p in tp.tensorboard.iterdir() if p.is_dir()] == []
    hp = _hparams(tp.tensorboard)
    assert hp["hparams"]["examples_per_class"] == config["examples_per_class"] == 20
    assert {k: hp["hparams"][k] for k in ("stage", "split", "transfer_layers", "high_lr_layers")} == \
        {"stage": "pretrain", "split": config["split"], "transfer_layers": 0, "high_lr_layers": 8}
    assert hp["metrics"] == ["train/acc", "train/loss", "val/acc", "val/loss"]
    traces = list(tp.profile.glob("*.pt.trace.json*"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def _hparams(folder) -> dict:
    """The HParams plugin's entry in a run folder, read back from its event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict = {"hparams": {}, "metrics": []}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    for k, v in data.session_start_info.hparams.items():
                        kind = v.WhichOneof("kind")
                        out["hparams"][k] = int(v.number_value) if kind == "number_value" and \
                            v.number_value.is_integer() else getattr(v, kind)
                if data.HasField("experiment"):
                    out["metrics"] = sorted(m.name.tag for m in data.experiment.metric_infos)
    return out
