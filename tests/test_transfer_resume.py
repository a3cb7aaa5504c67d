"""Exact resume of a ResNet protocol group (batch normalisation: running statistics, a
frozen unit's kept in evaluation mode): SIGKILL at random moments, in a PID namespace, and
every member's result, metrics and weights are an uninterrupted run's, bit for bit.

As tests/test_group_resume.py does for AlexNet: each run is `python -m hpcxfer run-task
STUDY g-...` with one torch thread under `unshare -fp --mount-proc`, so a kill reaches
only the worker started here. The kill moments come from a printed seed
(HPCXFER_KILL_SEED replays it).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from group_study import kill_at_random_moments, make_study, start_group

from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.worker import EXIT_DONE
from hpcxfer.worker.main import run_task

pytestmark = pytest.mark.slow

MEMBERS = [
    {"transfer_layers": 0, "high_lr_layers": 6, "initial_decay_epochs": 30},
    {"transfer_layers": 3, "frozen_layers": 2, "high_lr_layers": 1, "initial_decay_epochs": 1},
    {"protocol": "common"},
]
STUDY = {"epochs": 6, "batch_size": 5, "members": MEMBERS, "arch": "resnet-narrow"}
EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")


def metrics(tp) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s")} for r in iter_jsonl(tp.metrics)]


def test_sigkill_of_a_resnet_group_at_random_moments_changes_no_member(tmp_path):
    ref, pre, members, group = make_study(tmp_path / "ref", "r", {"keep_checkpoints": True}, **STUDY)
    assert run_task(str(ref.dir), pre.task_id) == EXIT_DONE
    reference = start_group(ref.dir, group.group_id, namespace=False)
    paths, *_ = make_study(tmp_path / "killed", "r", {"keep_checkpoints": True, "checkpoint_minutes": 0.0005},
                           **STUDY)
    shutil.copy(ref.task(pre.task_id).weights, paths.task(pre.task_id).weights)
    gp = paths.group(group.group_id)
    seed = int(os.environ.get("HPCXFER_KILL_SEED") or time.time_ns())
    print(f"kill seed {seed} (replay: HPCXFER_KILL_SEED={seed})")
    kills, _ = kill_at_random_moments(paths, group, members, seed, tries=3, timeout=300)
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()
    assert kills >= 2, f"the group finished before it could be killed twice (seed {seed})"
    mine = torch.load(gp.checkpoint, weights_only=True)["members"]
    theirs = torch.load(ref.group(group.group_id).checkpoint, weights_only=True)["members"]
    for t in members:
        result, expected = read_json(paths.task(t.task_id).result), read_json(ref.task(t.task_id).result)
        assert {k: result[k] for k in EXACT} == {k: expected[k] for k in EXACT}, (t.task_id, seed)
        assert result["restarts"] == kills, seed
        assert metrics(paths.task(t.task_id)) == metrics(ref.task(t.task_id)), seed
        model = mine[t.task_id]["model"]
        assert all(torch.equal(model[k], v) for k, v in theirs[t.task_id]["model"].items()), (t.task_id, seed)
        assert any(k.endswith("running_var") for k in model)
