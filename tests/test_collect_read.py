"""Collect forgives what clusters leave behind, and says what it skipped: each damaged case."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
from collect_study import ft, lines, write

from hpcxfer.collect import read_study
from hpcxfer.collect.aggregate import summarize
from hpcxfer.collect.metrics import merge_metrics


@pytest.fixture
def two(tmp_path):
    a, b = ft(0, 10, 7), ft(1, 10, 7)
    return write(tmp_path / "s", {a: 0.5, b: 0.7}), a, b


def test_truncated_last_line_is_skipped_and_counted(two):
    paths, a, b = two
    m = paths.task(a.task_id).metrics
    m.write_bytes(m.read_bytes() + b'{"epoch": 4, "val_acc": 0.9, "trai')
    rec = read_study(paths)
    assert not rec.skipped  # metrics are read only by views that need them
    (curve,) = merge_metrics(rec, jobs=1)
    assert curve.epochs.tolist() == [1, 2, 3] and curve.n.tolist() == [2, 2, 2]  # epoch 4 never finished
    (reason,) = rec.skipped.lines
    assert "truncated" in reason and rec.skipped.lines[reason] == 1
    assert rec.skipped.examples[reason] == [str(m)]
    assert len(rec.results) == 4  # 2 pre-training + 2 fine-tuning results, untouched


def test_garbage_line_is_skipped_and_the_rest_kept(two):
    paths, a, b = two
    m = paths.task(a.task_id).metrics
    good = m.read_text().splitlines()
    m.write_text("\n".join([good[0], "\x00\x00garbage{{", good[1], "[1, 2]", good[2]]) + "\n")
    rec = read_study(paths)
    (curve,) = merge_metrics(rec, jobs=1)
    assert curve.epochs.tolist() == [1, 2, 3] and curve.n.tolist() == [2, 2, 2]
    assert rec.skipped.lines == {"not JSON": 1, "not a JSON object": 1}


def test_duplicated_epoch_keeps_the_later_record(two):
    paths, a, b = two
    m = paths.task(a.task_id).metrics
    recs = lines(m)
    again = dict(recs[1], val_acc=0.123)  # a resumed run wrote epoch 2 a second time
    m.write_text("".join(json.dumps(r) + "\n" for r in [*recs[:2], again, recs[2]]))
    rec = read_study(paths)
    (curve,) = merge_metrics(rec, jobs=1)
    other = lines(paths.task(b.task_id).metrics)[1]["val_acc"]
    row = list(curve.rows())[1]
    assert row["epoch"] == 2 and row["replicates"] == 2
    assert row["val_acc_mean"] == pytest.approx((0.123 + other) / 2)
    assert rec.skipped.lines == {"duplicate epoch (the later record kept)": 1}


def test_task_with_metrics_but_no_result_is_pending_running_or_failed_in_status_words_with_its_log(tmp_path):
    cut, running, failed, pending = ft(0, 10, 7), ft(0, 10, 5), ft(0, 10, 3), ft(0, 10, 0)
    paths = write(tmp_path / "s", {cut: None, running: None, failed: None, pending: None})
    paths.task(pending.task_id).metrics.unlink()
    paths.task(running.task_id).running.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    paths.task(failed.task_id).failed.write_text(json.dumps({"error": "CUDA out of memory"}))
    rec = read_study(paths)
    states = {r["task_id"]: r for r in rec.incomplete}
    # status's words (hpcxfer.states.State): interrupted is pending, with the epoch it resumes from
    assert states[cut.task_id]["state"] == "pending" and states[cut.task_id]["epoch"] == 3
    assert "interrupted after epoch 3" in states[cut.task_id]["detail"]
    assert states[running.task_id]["state"] == "running"
    assert states[failed.task_id]["state"] == "failed" and "out of memory" in states[failed.task_id]["detail"]
    assert states[pending.task_id]["state"] == "pending" and states[pending.task_id]["log"] is None
    for t in (cut, running, failed):
        assert states[t.task_id]["log"] == str(paths.task(t.task_id).log)
    (cell,) = [c for c in summarize(rec.rows, rec.missing) if c["transfer_layers"] == 7]
    assert cell["replicates"] == 0 and cell["missing"] == 1 and cell["val_acc_mean"] is None


def test_a_task_a_backend_holds_reads_as_status_says_it(tmp_path):
    """One name for each state: a task the scheduler holds is queued (or running) in
    collect as in status, not pending."""
    from hpcxfer.states import Held, Hold

    queued, running, alone = ft(0, 10, 7), ft(0, 10, 5), ft(0, 10, 3)
    paths = write(tmp_path / "s", {queued: None, running: None, alone: None})
    held = {queued.task_id: Held(Hold.QUEUED, job="4711_0"), running.task_id: Held(Hold.RUNNING, job="4711_1")}
    states = {r["task_id"]: r["state"] for r in read_study(paths, held).incomplete}
    assert states == {queued.task_id: "queued", running.task_id: "running", alone.task_id: "pending"}


def test_unreadable_or_foreign_result_is_a_skipped_task(two, tmp_path):
    paths, a, b = two
    paths.task(a.task_id).result.write_text('{"val_acc": 0.5, "val_lo')  # not JSON
    paths.task(b.task_id).result.write_text(json.dumps({"task_id": "ft-someone-else", "val_acc": 0.9}))
    rec = read_study(paths)
    assert sorted(rec.skipped.tasks.values()) == [1, 1]
    assert {r["state"] for r in rec.incomplete} == {"failed"}  # as status says
    assert all("damaged result.json" in r["detail"] for r in rec.incomplete)
    (cell,) = summarize(rec.rows, rec.missing)
    assert cell["replicates"] == 0 and cell["missing"] == 2


def test_older_formats_are_read_and_counted(tmp_path):
    a, b = ft(0, 10, 7), ft(1, 10, 7)
    paths = write(tmp_path / "s", {a: 0.5, b: {"val_acc": 0.7, "val_loss": 1.0, "train_loss": 0.5}})
    # tasks.jsonl from before `frozen_layers` and `seed` existed
    index = lines(paths.tasks_index)
    for t in index:
        t.pop("frozen_layers"), t.pop("seed")
    paths.tasks_index.write_text("".join(json.dumps(t) + "\n" for t in index))
    # metrics with one lr for every group
    m = paths.task(b.task_id).metrics
    recs = lines(m)
    for r in recs:
        r["lr"] = r.pop("lr_high")
        r.pop("lr_low")
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))

    rec = read_study(paths)
    assert len(rec.tasks) == 4 and all(t["frozen_layers"] == 0 and t["seed"] == 0 for t in rec.tasks)
    # b's result.json has no train_acc: it comes from its last metrics record
    assert rec.results[b.task_id]["train_acc"] == recs[-1]["train_acc"]
    (cell,) = summarize(rec.rows, rec.missing)
    assert cell["replicates"] == 2 and cell["train_acc_mean"] == pytest.approx((0.9 + recs[-1]["train_acc"]) / 2)
    (curve,) = merge_metrics(rec, jobs=1)
    row = next(curve.rows())
    assert row["lr_low_mean"] == pytest.approx((0.001 + 0.01) / 2)  # a: 0.001; b: its single lr (0.01)
    reasons = " ".join(rec.skipped.adapted)
    assert "without 'frozen_layers'" in reasons and "without 'train_acc'" in reasons and "one 'lr'" in reasons
    assert not rec.skipped.tasks and not rec.skipped.lines


def test_damaged_task_index_lines_are_counted(two):
    paths, a, b = two
    index = paths.tasks_index.read_text().splitlines()
    broken = json.loads(index[-1])
    broken.pop("split")
    paths.tasks_index.write_text("\n".join([index[0], "garbage", *index[1:-1], json.dumps(broken), index[0]]) + "\n")
    rec = read_study(paths)
    assert [t["task_id"] for t in rec.tasks] == [json.loads(x)["task_id"] for x in index[:-1]]
    assert rec.skipped.lines == {"not JSON": 1}
    assert rec.skipped.tasks == {"in tasks.jsonl without 'split'": 1, "listed twice in tasks.jsonl": 1}


def test_parallel_merge_equals_serial(tmp_path, monkeypatch):
    import hpcxfer.collect.metrics as metrics

    monkeypatch.setattr(metrics, "PARALLEL_FROM", 1)
    results = {ft(s, size, n): 0.1 * n + 0.01 * s for s in (0, 1, 2) for size in (10, 25) for n in (3, 7)}
    paths = write(tmp_path / "s", results, records=4)
    m = paths.task(ft(2, 25, 7).task_id).metrics
    m.write_text(m.read_text() + "oops\n")
    serial, parallel = read_study(paths), read_study(paths)
    a, b = merge_metrics(serial, jobs=1), merge_metrics(parallel, jobs=2)
    assert [list(c.rows()) for c in a] == [list(c.rows()) for c in b]
    assert serial.skipped.lines == parallel.skipped.lines == {"not JSON": 1}


def test_the_cli_reports_what_it_skipped(two, cli):
    paths, a, b = two
    m = paths.task(a.task_id).metrics
    m.write_bytes(m.read_bytes() + b"{trunc")
    paths.task(b.task_id).result.unlink()
    out = cli("collect", paths.dir, "--view", "curves", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert "4 tasks: 3 with results, 1 pending" in out.stderr
    assert "skipped 1 line truncated" in out.stderr and str(m) in out.stderr
    rows = json.loads(out.stdout)["views"]["curves"]["rows"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["replicates"] for r in rows] == [2, 2, 2]


def test_records_without_a_usable_epoch_or_value(two):
    paths, a, b = two
    m = paths.task(a.task_id).metrics
    recs = lines(m)
    bad = [dict(recs[0], epoch="4"), dict(recs[0], epoch=4.5), dict(recs[0], epoch=True)]
    recs[2]["val_acc"] = None  # a metric left empty at epoch 3
    m.write_text("".join(json.dumps(r) + "\n" for r in [*recs, *bad]))
    rec = read_study(paths)
    (curve,) = merge_metrics(rec, jobs=1)
    rows = list(curve.rows())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    other = lines(paths.task(b.task_id).metrics)[2]["val_acc"]
    assert rows[2]["val_acc_mean"] == pytest.approx(other) and rows[2]["replicates"] == 2  # a still counts for the others
    assert rows[2]["train_loss_mean"] == pytest.approx(recs[2]["train_loss"])
    assert rec.skipped.lines == {"without an epoch (a non-negative integer)": 3}


def test_nan_in_a_result_is_read_and_written_as_null(two, cli):
    paths, a, b = two
    paths.task(a.task_id).result.write_text(
        f'{{"task_id": "{a.task_id}", "val_acc": 0.25, "val_loss": NaN, "train_loss": 1.0, "train_acc": 0.5}}')
    rec = read_study(paths)
    assert math.isnan(rec.results[a.task_id]["val_loss"]) and not rec.skipped
    out = cli("collect", paths.dir, "--format", "json")
    (cell,) = json.loads(out.stdout)["views"]["cells"]["rows"]  # strict JSON: NaN would not parse in most readers
    assert cell["val_loss_mean"] is None and cell["val_acc_mean"] == pytest.approx(0.475)


def test_the_standard_json_module_reads_the_same(two, monkeypatch):
    import hpcxfer.fileio as fileio

    paths, a, b = two
    m = paths.task(a.task_id).metrics
    m.write_bytes(m.read_bytes() + b"garbage\n" + b'{"epoch": 9')
    fast = read_study(paths)
    fast_curves = [list(c.rows()) for c in merge_metrics(fast, jobs=1)]
    monkeypatch.setattr(fileio, "_fast_loads", json.loads)
    slow = read_study(paths)
    assert [list(c.rows()) for c in merge_metrics(slow, jobs=1)] == fast_curves
    assert slow.skipped.lines == fast.skipped.lines and sum(fast.skipped.lines.values()) == 2
