"""A protocol group's worker, looped mode: each member exactly its solo run; a partly done
group; what a group writes and where; bad input, failures and stop requests.

Real training in this process on real images (tests/group_study.py), one torch thread.
A study trained member by member alone is the reference; a second study with the same
task ids runs one member alone first and then the group.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import StopAfter
from group_study import make_study

from hpcxfer.errors import StudyError
from hpcxfer.fileio import append_jsonl, atomic_write_json, iter_jsonl, read_json
from hpcxfer.study import read_group
from hpcxfer.worker import EXIT_DONE, EXIT_FAILED, EXIT_USAGE, learners
from hpcxfer.worker.group import train_group
from hpcxfer.worker.main import run_task
from hpcxfer.worker.signals import Interrupted

pytestmark = pytest.mark.slow  # every test trains protocol groups and their members alone

EXACT = ("val_acc", "val_loss", "train_loss", "train_acc")
TIMING = ("wall_s", "images_per_s")
RUNTIME = {"keep_checkpoints": True, "group_mode": "looped", "tensorboard": True}


def _metrics(tp) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in iter_jsonl(tp.metrics)]


def _files(tp) -> dict:
    return {p.relative_to(tp.dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in tp.dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(solo study, group study, pre-training, members, group, files of the member done
    before the group, as they were before the group ran)."""
    root = tmp_path_factory.mktemp("groups")
    solo, pre, members, group = make_study(root / "solo", "g", RUNTIME)
    assert run_task(str(solo.dir), pre.task_id) == EXIT_DONE
    for t in members:
        assert run_task(str(solo.dir), t.task_id) == EXIT_DONE
    grouped, *_ = make_study(root / "grouped", "g", RUNTIME)
    shutil.copy(solo.task(pre.task_id).weights, grouped.task(pre.task_id).weights)
    early = grouped.task(members[1].task_id)  # the frozen member (n 3, f 2), done alone first
    assert run_task(str(grouped.dir), early.task_id) == EXIT_DONE
    before = _files(early)
    assert run_task(str(grouped.dir), group.group_id) == EXIT_DONE
    return solo, grouped, pre, members, group, before


def test_every_member_is_bit_identical_to_its_solo_run(runs):
    solo, grouped, _, members, group, _ = runs
    gp = grouped.group(group.group_id)
    stored = torch.load(gp.checkpoint, weights_only=True)["members"]  # kept: keep_checkpoints
    for t in members:
        mine, ref = grouped.task(t.task_id), solo.task(t.task_id)
        result, ref_result = read_json(mine.result), read_json(ref.result)
        assert {k: result[k] for k in EXACT} == {k: ref_result[k] for k in EXACT}, t.task_id
        assert set(result) - {"group"} == set(ref_result) and "group" not in ref_result
        assert [list(r) for r in iter_jsonl(mine.metrics)] == [list(r) for r in iter_jsonl(ref.metrics)]
        assert _metrics(mine) == _metrics(ref) and [r["epoch"] for r in _metrics(mine)] == [1, 2, 3]
        weights = stored[t.task_id]["model"] if t is not members[1] else \
            torch.load(mine.checkpoint, weights_only=True)["model"]
        ref_weights = torch.load(ref.checkpoint, weights_only=True)["model"]
        assert all(torch.equal(weights[k], v) for k, v in ref_weights.items()), t.task_id
    lrs = {t.task_id: [r.get("lr_high") for r in _metrics(solo.task(t.task_id))] for t in members}
    assert lrs[members[1].task_id] == pytest.approx([0.01, 0.001, 0.0001])  # d 1: decays inside the run
    assert lrs[members[2].task_id] == pytest.approx([0.005, 0.0005, 0.00005])  # d 0, lr_high 0.05


def test_a_member_done_before_the_group_is_left_alone(runs):
    _, grouped, _, members, group, before = runs
    early = grouped.task(members[1].task_id)
    assert _files(early) == before
    assert "group" not in read_json(early.result)
    trained = [t.task_id for t in members if t is not members[1]]
    assert all(read_json(grouped.task(tid).result)["group"] == group.group_id for tid in trained)
    stored = torch.load(grouped.group(group.group_id).checkpoint, weights_only=True)
    assert sorted(stored["members"]) == sorted(trained) and stored["mode"] == "looped"
    assert "3 of 4 members to train" in grouped.group(group.group_id).log.read_text()


def test_what_a_group_writes_and_where(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, grouped, _, members, group, _ = runs
    gp = grouped.group(group.group_id)
    log = gp.log.read_text()
    assert "4 members looped" not in log and "3 members looped on cpu (fp32)" in log and "first step" in log
    for t in members[:1] + members[2:]:
        tp = grouped.task(t.task_id)
        assert f"trained in protocol group {group.group_id}" in tp.log.read_text()
        assert f"done in group {group.group_id}" in tp.log.read_text()
        assert not tp.running.exists() and not tp.failed.exists() and not tp.checkpoint.exists()
        events = EventAccumulator(str(tp.tensorboard))
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("val/loss")] == \
            [(r["epoch"], pytest.approx(r["val_loss"])) for r in _metrics(tp)]
    assert run_task(str(grouped.dir), group.group_id) == EXIT_DONE  # all done: nothing to do


@pytest.mark.parametrize("damage, words", [
    (None, "missing"), (b"{not json", "unreadable"), (b'{"group_id": "g-other", "members": []}', "not the record"),
    (b'{"group_id": "@", "members": ["ft-a", "ft-a"]}', "distinct task ids"),
])
def test_a_missing_or_damaged_group_json_is_bad_input(runs, damage, words, cli):
    _, grouped, _, _, group, _ = runs
    gp = grouped.group("g-s0-x10-0000000000")
    gp.dir.mkdir(exist_ok=True)
    gp.config.unlink(missing_ok=True)
    if damage is not None:
        gp.config.write_bytes(damage.replace(b"@", gp.group_id.encode()))
    with pytest.raises(StudyError, match=words):
        read_group(grouped, gp.group_id)
    if damage is None:  # the command line: one line, exit 2
        out = cli("run-task", grouped.dir, gp.group_id)
        assert out.returncode == EXIT_USAGE and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "group.json: missing" in out.stderr


@pytest.fixture
def fresh(tmp_path, runs):
    """A study of the same group with nothing trained but its pre-training."""
    solo, _, pre, members, group, _ = runs
    paths, *_ = make_study(tmp_path / "fresh", "g", {"group_mode": "looped"})
    shutil.copy(solo.task(pre.task_id).weights, paths.task(pre.task_id).weights)
    return paths, members, group, [paths.task(t.task_id) for t in members]


def test_bad_input_and_real_errors_fail_every_unfinished_member(fresh, monkeypatch, capsys):
    paths, members, group, tps = fresh
    weights = paths.task(members[0].depends_on[0]).weights
    weights.rename(weights.with_suffix(".away"))
    assert run_task(str(paths.dir), group.group_id) == EXIT_USAGE
    assert capsys.readouterr().err.count("\n") == 1
    for tp in tps:
        failed = read_json(tp.failed)
        assert "pre-trained model" in failed["error"] and failed["exit_status"] == EXIT_USAGE
        assert failed["group"] == group.group_id and failed["log"] == str(paths.group(group.group_id).log)
        assert not tp.running.exists() and not tp.metrics.exists()
    weights.with_suffix(".away").rename(weights)

    gp = paths.group(group.group_id)
    record = read_json(gp.config)
    atomic_write_json(gp.config, {**record, "members": record["members"] + [members[0].depends_on[0]]})
    assert run_task(str(paths.dir), group.group_id) == EXIT_USAGE  # a pre-training is no member
    assert "is a pretrain task" in read_json(tps[0].failed)["error"]
    atomic_write_json(gp.config, record)

    def broken(self, x, y):
        raise RuntimeError("the device fell off")

    monkeypatch.setattr(learners.Looped, "step", broken)
    assert run_task(str(paths.dir), group.group_id) == EXIT_FAILED
    for tp in tps:
        failed = read_json(tp.failed)
        assert failed["exit_status"] == EXIT_FAILED and "the device fell off" in failed["traceback"]
        assert "failed in group" in tp.log.read_text()


def test_a_stop_request_checkpoints_and_the_group_resumes_exactly(fresh, runs):
    solo = runs[0]
    paths, members, group, tps = fresh
    gp = paths.group(group.group_id)
    configs = [read_json(tp.config) for tp in tps]
    ids = [t.task_id for t in members]
    with pytest.raises(Interrupted):  # step 7 of 15: mid-way through the second epoch
        train_group(paths, gp, ids, tps, configs, StopAfter(7, 15))
    state = torch.load(gp.checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2) and sorted(state["members"]) == sorted(ids)
    for tp in tps:  # written after the checkpoint by a run that died: dropped on resume
        append_jsonl(tp.metrics, {"epoch": 2, "val_acc": 0.0})
    assert run_task(str(paths.dir), group.group_id) == EXIT_DONE
    for t, tp in zip(members, tps):
        ref = solo.task(t.task_id)
        result = read_json(tp.result)
        assert {k: result[k] for k in EXACT} == {k: read_json(ref.result)[k] for k in EXACT}
        assert _metrics(tp) == _metrics(ref) and result["restarts"] == 1
    assert not gp.checkpoint.exists() and not gp.checkpoint_prev.exists()


def test_a_checkpoint_of_other_members_is_refused(fresh):
    paths, members, group, tps = fresh
    gp = paths.group(group.group_id)
    configs = [read_json(tp.config) for tp in tps]
    with pytest.raises(Interrupted):
        train_group(paths, gp, [t.task_id for t in members], tps, configs, StopAfter(1))
    record = read_json(gp.config)
    atomic_write_json(gp.config, {**record, "members": record["members"][::-1]})  # another member list
    assert run_task(str(paths.dir), group.group_id) == EXIT_USAGE
    assert "different group config" in read_json(tps[0].failed)["error"]
    atomic_write_json(gp.config, record)
    atomic_write_json(tps[3].result, {"task_id": "someone else"})  # damaged: to be trained again
    state = torch.load(gp.checkpoint, weights_only=True)
    assert run_task(str(paths.dir), group.group_id) == EXIT_DONE  # resumes every member, the damaged too
    assert tps[3].result_damaged.exists() and read_json(tps[3].result)["restarts"] == 1
    assert state["epoch"] * 5 + state["step"] == 1
