"""Groups at a search's rungs: a group stopped at a rung splits its checkpoint into its
members' own, and survivors of different groups form a new group from those, each
member's records bit for bit those of its task run alone.

Real training on real images (tests/group_study.py: 60 training and 20 validation
Fashion-MNIST images a class), one torch thread, looped mode.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_GRID, merge
from group_study import MEMBERS, fashion_tree, make_study

from hpcxfer import service
from hpcxfer.checkpoints import boundary
from hpcxfer.fileio import atomic_write_json, iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.groups import Group, group_id
from hpcxfer.layout import StudyPaths
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker import EXIT_DONE, EXIT_RESUME, EXIT_USAGE, checkpoint
from hpcxfer.worker.main import run_task

EXACT = ("val_acc", "val_loss", "train_acc", "train_loss", "epochs")
TIMING = ("wall_s", "images_per_s")
#: Six protocols of one cell: the four of group_study and two more.
SIX = [*MEMBERS, {"transfer_layers": 6, "high_lr_layers": 2, "initial_decay_epochs": 2},
       {"transfer_layers": 4, "frozen_layers": 1, "high_lr_layers": 8, "initial_decay_epochs": 1}]
#: What a task's run alone saves in its checkpoint (hpcxfer/worker/train.py run()).
SOLO_KEYS = {"format_version", "task", "config", "model", "optimizer", "scaler", "loss_sum", "correct", "last",
             "rng", "epoch", "step", "order", "train_s", "restarts", "wall_s"}


def _metrics(tp) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in iter_jsonl(tp.metrics)]


def _fake_checkpoint(tp, epoch: int | None, step: int = 0, stale: bool = False) -> None:
    """A checkpoint file and, unless `epoch` is None, its position (`stale`: of another file)."""
    tp.dir.mkdir(parents=True, exist_ok=True)
    tp.checkpoint.write_bytes(b"\0" * 100)
    if epoch is not None:
        st = tp.checkpoint.stat()
        atomic_write_json(tp.checkpoint_position, {"epoch": epoch, "step": step, "bytes": st.st_size + stale,
                                                   "mtime_ns": st.st_mtime_ns})


def _write_group(paths: StudyPaths, tasks: list) -> Group:
    group = Group(group_id(tasks), tuple(t.task_id for t in tasks))
    gp = paths.group(group.group_id)
    gp.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(gp.config, group.to_dict())
    return group


def test_submit_groups_tasks_whose_checkpoints_stand_at_one_epoch_boundary(tmp_path):
    seven = [*SIX, {"transfer_layers": 2, "high_lr_layers": 1, "initial_decay_epochs": 1}]
    paths, pre, m, _ = make_study(tmp_path / "s", "g", {"group_max": 0}, members=seven)
    _fake_checkpoint(paths.task(m[0].task_id), 1)
    _fake_checkpoint(paths.task(m[1].task_id), 1)
    _fake_checkpoint(paths.task(m[2].task_id), 2)  # at another boundary than any other task
    _fake_checkpoint(paths.task(m[3].task_id), 1, step=3)  # mid-epoch
    _fake_checkpoint(paths.task(m[4].task_id), 1, stale=True)  # its position describes another file
    assert [boundary(paths.task(t.task_id)) for t in m] == [1, 1, 2, None, None, None, None]
    req = service.prepare(str(tmp_path / "s" / "g.yaml"), "local", None)
    plan = service.decide(req, {})
    assert [u.members for u in plan.units] == [
        (pre.task_id,), (m[0].task_id, m[1].task_id), (m[2].task_id,), (m[3].task_id,), (m[4].task_id,),
        (m[5].task_id, m[6].task_id)]
    # a save cut between its two renames: the newest checkpoint is the .new one, not where it says
    paths.task(m[1].task_id).checkpoint_new.write_bytes(b"\0")
    assert boundary(paths.task(m[1].task_id)) is None


def test_a_group_stops_at_its_members_earliest_stop_request(tmp_path):
    paths = StudyPaths(tmp_path)
    early, late, none = (paths.task(f"ft-{name}") for name in ("early", "late", "none"))
    for tp, stop in ((early, 1), (late, 2)):
        tp.dir.mkdir(parents=True)
        atomic_write_json(tp.rung, {"stop_after": stop})
    assert [checkpoint.rung_reached([late, early, none], e) for e in (0, 1, 2)] == [False, True, True]
    assert [checkpoint.rung_reached([late, none], e) for e in (1, 2, 3)] == [False, True, True]
    assert not checkpoint.rung_reached([none], 5)


@pytest.mark.slow
def test_a_group_split_at_a_rung_regroups_with_another_groups_member(tmp_path):
    runtime = {"group_mode": "looped", "group_max": 0}
    ref, pre, m, _ = make_study(tmp_path / "ref", "g", runtime, members=SIX)
    assert run_task(str(ref.dir), pre.task_id) == EXIT_DONE
    regrouped, alone = [m[0], m[1], m[4]], m[2]
    for t in [*regrouped, alone]:  # the references: each task alone, uninterrupted
        assert run_task(str(ref.dir), t.task_id) == EXIT_DONE

    paths, *_ = make_study(tmp_path / "s", "g", runtime, members=SIX)
    for f in ("weights", "result"):
        shutil.copy(getattr(ref.task(pre.task_id), f), getattr(paths.task(pre.task_id), f))
    g1, g2 = _write_group(paths, m[:4]), _write_group(paths, m[4:])
    for t in m:
        atomic_write_json(paths.task(t.task_id).rung, {"stop_after": 1})
    assert run_task(str(paths.dir), g1.group_id) == EXIT_RESUME
    assert run_task(str(paths.dir), g2.group_id) == EXIT_RESUME
    for g in (g1, g2):
        assert not list(paths.group(g.group_id).dir.glob("checkpoint*"))  # split: the group's is gone
    for t in m:
        tp = paths.task(t.task_id)
        state = torch.load(tp.checkpoint, map_location="cpu", weights_only=True)
        assert set(state) - {"sha256"} == SOLO_KEYS and state["task"] == t.identity()
        assert (state["epoch"], state["step"], boundary(tp)) == (1, 0, 1)
        assert [r["epoch"] for r in iter_jsonl(tp.metrics)] == [1] and not tp.result.exists()

    # survivors of both groups regroup; another member goes on alone from its own checkpoint
    for t in [*regrouped, alone]:
        paths.task(t.task_id).rung.unlink()
    g3 = _write_group(paths, regrouped)
    assert run_task(str(paths.dir), g3.group_id) == EXIT_DONE
    assert run_task(str(paths.dir), alone.task_id) == EXIT_DONE
    for t in [*regrouped, alone]:
        tp, rp = paths.task(t.task_id), ref.task(t.task_id)
        result, reference = read_json(tp.result), read_json(rp.result)
        assert {k: result[k] for k in EXACT} == {k: reference[k] for k in EXACT}, t.task_id
        assert _metrics(tp) == _metrics(rp) and len(_metrics(tp)) == 3, t.task_id
        assert result["restarts"] == 1 and result.get("group") == (g3.group_id if t in regrouped else None)
        assert not tp.checkpoint.exists() and not tp.checkpoint_position.exists()

    # never trained from a mismatch: another random state, or a member mid-epoch
    tp3, tp5 = paths.task(m[3].task_id), paths.task(m[5].task_id)
    g4 = _write_group(paths, [m[3], m[5]])
    own = tp3.checkpoint.read_bytes()
    state = checkpoint.load_latest(tp5, m[5].identity())
    state.pop("format_version")
    for change, words in (({"rng": {**state["rng"], "data": torch.Generator().manual_seed(7).get_state()}},
                           "random state"), ({"step": 2}, "one epoch boundary")):
        checkpoint.save(tp5, {**state, **change})
        assert run_task(str(paths.dir), g4.group_id) == EXIT_USAGE
        assert words in read_json(tp3.failed)["error"]
        assert tp3.checkpoint.read_bytes() == own and not paths.group(g4.group_id).checkpoint.exists()


#: Four protocols, two splits, 4 epochs, rungs after epochs 1 and 2, groups of two.
SEARCH = {
    "finetune": {"split": [0, 1], "epochs": 4, "batch_size": 10, "decay_every": 1},
    "pretrain": {"epochs": 2, "batch_size": 32, "examples_per_class": 60, "decay_every": 1},
    "experiments": [{"name": "named", "protocol": ["scratch", "common"]},
                    {"name": "n", "transfer_layers": [3, 5], "frozen_layers": 0, "high_lr_layers": 8}],
    "search": {"eta": 2, "rungs": [1, 2]},
    "runtime": {"eval_every": 1, "group_max": 2, "group_mode": "looped", "threads": 1, "tensorboard": False},
}


def _groups(paths: StudyPaths) -> list[set[str]]:
    return [set(read_json(f)["members"]) for f in paths.groups_dir.glob("*/group.json")]


@pytest.mark.slow
def test_a_search_regroups_survivors_of_different_groups(tmp_path, cli):
    tree = fashion_tree(tmp_path)
    data = {"dataset": "folders", "path": str(tree), "image_size": 28, "crop": 28, "index_cache": str(tmp_path / "i")}
    grid = merge(TINY_GRID, {**SEARCH, "root": str(tmp_path / "runs"), "data": data})
    (tmp_path / "grid.yaml").write_text(json.dumps(grid))
    run = cli("tune", tmp_path / "grid.yaml", "--backend", "local", "--wait", timeout=900,
              env={"HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    paths = StudyPaths.of(tmp_path / "runs", "tiny")
    rung0, rung1 = (read_json(paths.rung_decision(i))["sizes"]["10"] for i in (0, 1))
    survivors = [s["tasks"] for s in rung0 if s["kept"]]
    finalists = next(s["tasks"] for s in rung1 if s["kept"])
    for s in rung0 + rung1:
        if not s["kept"]:  # pruned: stopped at its rung with its own checkpoint, not failed
            for t in s["tasks"]:
                tp = paths.task(t)
                assert tp.checkpoint.exists() and not tp.result.exists() and not tp.failed.exists()
                rung = read_json(tp.pruned)["epoch"]
                assert [r["epoch"] for r in iter_jsonl(tp.metrics)] == list(range(1, rung + 1))
    groups = _groups(paths)
    # rung 0 ran in groups of two; its two survivors came from different groups of a split,
    # and trained on to rung 1 in one group of both
    for a, b in zip(*survivors):  # one split's task of each survivor
        assert {a, b} in groups, (a, b, groups)
        assert len([g for g in groups if a in g]) == 2  # its group at rung 0, without b, and {a, b}
    assert all(len(g) == 2 for g in groups)
    assert not list(paths.groups_dir.rglob("checkpoint*"))  # every group split or finished

    # the finalists' records are those of their tasks run alone, bit for bit
    grid["study"] = "alone"
    (tmp_path / "alone.yaml").write_text(json.dumps(grid))
    full = load_grid(tmp_path / "alone.yaml")
    tasks = expand(full)
    ref = study_paths(full)
    write_study(ref, full, tasks)
    for t in tasks:
        if t.stage == "pretrain":
            for f in ("weights", "result"):
                shutil.copy(getattr(paths.task(t.task_id), f), getattr(ref.task(t.task_id), f))
    for t in finalists:
        assert run_task(str(ref.dir), t) == EXIT_DONE
        searched, alone = read_json(paths.task(t).result), read_json(ref.task(t).result)
        assert {k: searched[k] for k in EXACT} == {k: alone[k] for k in EXACT}, t
        assert _metrics(paths.task(t)) == _metrics(ref.task(t)) and len(_metrics(ref.task(t))) == 4
