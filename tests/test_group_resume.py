"""Exact resume of a real group worker: SIGKILL at random moments, and each stop signal.

Every run is `python -m hpcxfer run-task STUDY g-...` with one torch thread, in its own
PID namespace (`unshare -fp --mount-proc`), so the signals this test sends reach only the
worker it started. The group is tests/group_study.py's four members, 8 epochs of 10 steps.
After any number of kills, every member's result, metrics and final weights must be those
of an uninterrupted run, bit for bit. The kill moments are drawn from a seed that is
printed (and taken from HPCXFER_KILL_SEED when set), so a failure can be replayed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import torch
from conftest import wait_for
from group_study import kill_at_random_moments, make_study, start_group, worker_of

from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.worker import EXIT_DONE, EXIT_RESUME
from hpcxfer.worker.main import run_task

pytestmark = pytest.mark.slow  # a dozen worker processes

EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")
TIMING = ("wall_s", "images_per_s")
STUDY = {"epochs": 8, "batch_size": 5}  # long enough that a kill 0-0.4 s after a checkpoint lands before the end


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The pre-training (done here) and the uninterrupted group run, started at once so that
    it runs beside the test's own runs."""
    root = tmp_path_factory.mktemp("group-reference")
    paths, pre, members, group = make_study(root / "ref", "g", {"keep_checkpoints": True}, **STUDY)
    assert run_task(str(paths.dir), pre.task_id) == EXIT_DONE
    proc = start_group(paths.dir, group.group_id, namespace=False)

    def result():
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        stored = torch.load(paths.group(group.group_id).checkpoint, weights_only=True)["members"]
        return {t.task_id: (read_json(paths.task(t.task_id).result), _metrics(paths.task(t.task_id)),
                            stored[t.task_id]["model"]) for t in members}

    return paths.task(pre.task_id).weights, result


def _metrics(tp) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in iter_jsonl(tp.metrics)]


def _study(tmp_path, name: str, runtime: dict, reference):
    weights, _ = reference
    paths, pre, members, group = make_study(tmp_path / name, "g", {"keep_checkpoints": True, **runtime}, **STUDY)
    shutil.copy(weights, paths.task(pre.task_id).weights)
    return paths, members, group


def _assert_identical(paths, members, group, reference) -> list[dict]:
    ref = reference[1]()
    stored = torch.load(paths.group(group.group_id).checkpoint, weights_only=True)["members"]
    results = []
    for t in members:
        tp = paths.task(t.task_id)
        ref_result, ref_metrics, ref_weights = ref[t.task_id]
        result = read_json(tp.result)
        assert {k: result[k] for k in EXACT} == {k: ref_result[k] for k in EXACT}, t.task_id
        assert _metrics(tp) == ref_metrics and [r["epoch"] for r in ref_metrics] == list(range(1, STUDY["epochs"] + 1))
        assert all(torch.equal(stored[t.task_id]["model"][k], v) for k, v in ref_weights.items()), t.task_id
        assert not tp.running.exists() and not tp.failed.exists() and not tp.checkpoint.exists()
        results.append(result)
    assert len({r["restarts"] for r in results}) == 1
    return results


def test_sigkill_at_random_moments_changes_no_member(tmp_path, reference):
    # checkpoint_minutes 0.0005 (30 ms): a group checkpoint every step or two
    paths, members, group = _study(tmp_path, "killed", {"checkpoint_minutes": 0.0005}, reference)
    seed = int(os.environ.get("HPCXFER_KILL_SEED") or time.time_ns())
    print(f"kill seed {seed} (replay: HPCXFER_KILL_SEED={seed})")
    kills, resumed_from = kill_at_random_moments(paths, group, members, seed, tries=4)
    print(f"killed {kills} times; resumed from (epoch, step) {resumed_from}")
    assert kills >= 3, f"the group finished before it could be killed three times (seed {seed})"
    assert _assert_identical(paths, members, group, reference)[0]["restarts"] == kills, f"seed {seed}"


def test_each_stop_signal_checkpoints_and_exits_75(tmp_path, reference):
    paths, members, group = _study(tmp_path, "signalled", {"checkpoint_minutes": 60}, reference)
    gp = paths.group(group.group_id)
    signals = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    for n, sig in enumerate(signals):
        proc = start_group(paths.dir, group.group_id)
        worker = worker_of(proc)
        # signal once this run has taken its first step (a checkpoint-free hour ahead)
        assert wait_for(lambda: gp.log.exists() and gp.log.read_text().count("first step") > n, proc)
        time.sleep(0.05 * n)
        os.kill(worker, sig)
        assert proc.wait(timeout=60) == EXIT_RESUME, f"{sig.name}: {proc.stderr.read().decode()}"
        state = torch.load(gp.checkpoint, weights_only=True)
        assert state["epoch"] * 10 + state["step"] > 0 and len(state["members"]) == len(members)
        assert f"stopped by {sig.name}" in gp.log.read_text()
        for t in members:
            tp = paths.task(t.task_id)
            assert f"stopped by {sig.name}" in tp.log.read_text()
            assert not tp.running.exists() and not tp.result.exists()
    proc = start_group(paths.dir, group.group_id)
    assert proc.wait(timeout=300) == EXIT_DONE
    assert _assert_identical(paths, members, group, reference)[0]["restarts"] == len(signals)
