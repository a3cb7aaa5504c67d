"""Regrouping keeps progress and leaks no disk.

A grid that adds a protocol to a cell whose group was interrupted must not restart the
group's members from epoch 0 in a new group: the group that holds their checkpoint runs
again as it is, and only what has no progress is grouped anew. A group checkpoint that no
unfinished member needs is removed by submit, and `status` reports the bytes of any that
are left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import run_cli, wait_for
from group_study import make_study, worker_of

from hpcxfer import service
from hpcxfer.checkpoints import leftover_bytes, remove_leftovers
from hpcxfer.fileio import atomic_write_json, iter_jsonl, read_json
from hpcxfer.grid.groups import group_id
from hpcxfer.locks import Lock
from hpcxfer.study import TaskState
from hpcxfer.worker import EXIT_DONE
from hpcxfer.worker.main import run_task

ADDED = {"transfer_layers": 6, "high_lr_layers": 2, "initial_decay_epochs": 2}
EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")
TIMING = ("wall_s", "images_per_s")
ENV = {"HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _grow(grid_file, runtime: dict | None = None) -> service.Request:
    """The study's grid with one more protocol in its cell (and `runtime` merged in),
    written over its grid file; the submit request for it."""
    grid = yaml.safe_load(grid_file.read_text())
    grid["experiments"] = [*grid["experiments"], ADDED]
    grid["runtime"] = {**grid["runtime"], "group_max": 0, **(runtime or {})}
    grid_file.write_text(yaml.safe_dump(grid))
    return service.prepare(str(grid_file), "local", None)


def _fake_checkpoint(wp, size: int) -> None:
    wp.dir.mkdir(parents=True, exist_ok=True)
    wp.checkpoint.write_bytes(b"\0" * size)


def _done(paths, task_id: str) -> None:
    atomic_write_json(paths.task(task_id).result, {"task_id": task_id, "val_acc": 0.5})


@pytest.fixture
def study(tmp_path):
    paths, pre, members, group = make_study(tmp_path / "s", "g")
    return paths, pre, members, group, tmp_path / "s" / "g.yaml"


def test_a_group_with_a_checkpoint_runs_again_as_it_is(study):
    paths, pre, _, group, grid_file = study
    gp = paths.group(group.group_id)
    req = _grow(grid_file)
    added = [t for t in req.tasks if t.stage == "finetune" and t.task_id not in group.members]
    assert len(added) == 1
    # no progress anywhere: the five protocols of the cell form one new group
    fresh = service.decide(req, {})
    assert [len(g.members) for g in fresh.groups] == [5]
    # the old group has a checkpoint: it keeps its four members, the added task runs alone
    _fake_checkpoint(gp, 100)
    plan = service.decide(req, {})
    assert [(u.id, u.members) for u in plan.units] == [
        (pre.task_id, (pre.task_id,)), (group.group_id, group.members), (added[0].task_id, (added[0].task_id,))]
    assert plan.groups == [group]


def test_a_task_with_a_checkpoint_of_its_own_runs_alone(study):
    paths, pre, members, group, grid_file = study
    req = _grow(grid_file)
    _fake_checkpoint(paths.task(members[0].task_id), 100)
    plan = service.decide(req, {})
    added = [t.task_id for t in req.tasks if t.stage == "finetune" and t.task_id not in group.members]
    assert [u.members for u in plan.units] == [
        (pre.task_id,), (members[0].task_id,), (*[m.task_id for m in members[1:]], *added)]


def test_status_reports_group_checkpoints_no_member_needs(study, cli):
    paths, _, members, group, _ = study
    old = paths.group(group.group_id)
    # a newer group of the same members (as a submit before this one formed it) holds their progress
    newer_members = (*group.members[1:], group.members[0])
    newer = paths.group(group_id(members) + "x")
    newer.dir.mkdir(parents=True)
    atomic_write_json(newer.config, {"group_id": newer.group_id, "members": list(newer_members)})
    os.utime(old.config, (time.time() - 60, time.time() - 60))
    _fake_checkpoint(old, 1500)
    _fake_checkpoint(newer, 700)
    old.checkpoint_prev.write_bytes(b"\0" * 500)
    assert leftover_bytes(paths) == 2000  # the old group's two checkpoints; the newer one is needed
    out = cli("status", paths.dir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["leftover_checkpoint_bytes"] == 2000
    out = cli("status", paths.dir)
    assert "leftover group checkpoints: 2.0 kB" in " ".join(out.stdout.split())
    # a member queued or running in a backend, or held by a live worker: nothing of its groups is leftover
    assert leftover_bytes(paths, [TaskState(members[1].task_id, "queued", "")]) == 0
    lock = Lock(paths.task(members[0].task_id).running, {"group": old.group_id}).acquire()
    try:
        assert leftover_bytes(paths) == 0
        assert remove_leftovers(paths) == 0 and old.checkpoint.exists()
    finally:
        lock.release()
    assert remove_leftovers(paths) == 2000
    assert not old.checkpoint.exists() and not old.checkpoint_prev.exists() and newer.checkpoint.exists()
    assert old.config.exists()  # its record stays: results name the group
    assert json.loads(cli("status", paths.dir, "--json").stdout)["leftover_checkpoint_bytes"] == 0


@pytest.mark.parametrize("keep", [False, True])
def test_submit_removes_the_checkpoints_of_a_finished_group(study, keep):
    paths, pre, members, group, grid_file = study
    gp = paths.group(group.group_id)
    for t in [pre, *members]:
        _done(paths, t.task_id)
    _fake_checkpoint(gp, 300)
    grid = yaml.safe_load(grid_file.read_text())
    grid["runtime"]["keep_checkpoints"] = keep
    grid_file.write_text(yaml.safe_dump(grid))
    out = run_cli("submit", grid_file, "--backend", "local")
    assert out.returncode == 0, out.stderr
    assert gp.checkpoint.exists() == keep  # runtime.keep_checkpoints keeps what a user asked to keep
    assert leftover_bytes(paths) == (300 if keep else 0)


# ---------------------------------------------------------------- a real group, killed and regrouped
EPOCHS = 4


def _metrics(tp) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in iter_jsonl(tp.metrics)]


@pytest.mark.slow
def test_a_killed_group_keeps_its_progress_when_a_protocol_is_added(tmp_path):
    runtime = {"checkpoint_minutes": 0.0005, "group_mode": "looped"}  # a group checkpoint every step or two
    ref, pre, members, group = make_study(tmp_path / "ref", "g", runtime, epochs=EPOCHS, batch_size=5)
    assert run_task(str(ref.dir), pre.task_id) == EXIT_DONE
    assert run_task(str(ref.dir), group.group_id) == EXIT_DONE  # uninterrupted
    paths, _, _, _ = make_study(tmp_path / "killed", "g", runtime, epochs=EPOCHS, batch_size=5)
    shutil.copy(ref.task(pre.task_id).weights, paths.task(pre.task_id).weights)
    shutil.copy(ref.task(pre.task_id).result, paths.task(pre.task_id).result)
    gp = paths.group(group.group_id)
    first = paths.task(members[0].task_id)
    cmd = ["unshare", "-fp", "--mount-proc", "--kill-child=SIGKILL", sys.executable, "-m", "hpcxfer", "run-task",
           str(paths.dir), group.group_id]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker = worker_of(proc)
    # kill it in its second epoch, after a checkpoint of its own
    assert wait_for(lambda: len(list(iter_jsonl(first.metrics))) >= 1 and gp.checkpoint.exists(), proc)
    os.kill(worker, signal.SIGKILL)
    proc.wait()
    assert not first.result.exists() and gp.checkpoint.exists()

    req = _grow(tmp_path / "killed" / "g.yaml", {"keep_checkpoints": False})
    out = run_cli("submit", req.grid.source, "--backend", "local", "--wait", env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    for t in members:
        tp, rp = paths.task(t.task_id), ref.task(t.task_id)
        result, reference = read_json(tp.result), read_json(rp.result)
        assert {k: result[k] for k in EXACT} == {k: reference[k] for k in EXACT}, t.task_id
        assert _metrics(tp) == _metrics(rp) and len(_metrics(tp)) == EPOCHS
        # trained on by the group that held its checkpoint, resumed once, never from epoch 0
        assert result["group"] == group.group_id and result["restarts"] == 1, t.task_id
    added = [t for t in req.tasks if t.stage == "finetune" and t.task_id not in group.members]
    assert read_json(paths.task(added[0].task_id).result)["val_acc"] >= 0
    # no checkpoint left behind in groups/, and status says so
    assert not [p for p in paths.groups_dir.rglob("checkpoint*")]
    out = run_cli("status", paths.dir, "--json")
    assert json.loads(out.stdout)["leftover_checkpoint_bytes"] == 0


def test_a_new_group_refuses_to_throw_away_a_members_own_checkpoint(study):
    paths, pre, members, group, _ = study
    assert run_task(str(paths.dir), pre.task_id) == EXIT_DONE  # the group could train: its source model is there
    tp = paths.task(members[1].task_id)
    _fake_checkpoint(tp, 100)
    assert run_task(str(paths.dir), group.group_id) == 2
    failed = read_json(tp.failed)
    assert "checkpoint of its run alone" in failed["error"] and tp.checkpoint.read_bytes() == b"\0" * 100
    assert not paths.group(group.group_id).checkpoint.exists() and not tp.result.exists()
