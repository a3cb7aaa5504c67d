"""Aggregation and the paper's views on small studies whose every number is worked by hand."""

from __future__ import annotations

import json
import math

import pytest
from collect_study import ft, write

from hpcxfer.collect import read_study, reports
from hpcxfer.collect.aggregate import parse_by, summarize
from hpcxfer.collect.build import collect
from hpcxfer.collect.metrics import merge_metrics
from hpcxfer.errors import ConfigError


def cells_of(paths, by=None):
    rec = read_study(paths)
    return summarize(rec.rows, rec.missing, parse_by(by))


def test_mean_std_n_missing_by_hand(tmp_path):
    # common at 10/class: splits 0, 1, 2 -> 0.50, 0.60, 0.85; split 3 has no result
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.50, ft(1, 10, 7): 0.60, ft(2, 10, 7): 0.85, ft(3, 10, 7): None,
                                   ft(0, 10, 3): 0.40, ft(0, 25, 7): 0.70})
    cells = {(c["examples_per_class"], c["transfer_layers"]): c for c in cells_of(paths)}
    c = cells[(10, 7)]
    mean = (0.50 + 0.60 + 0.85) / 3  # 0.65
    std = math.sqrt(((0.50 - mean) ** 2 + (0.60 - mean) ** 2 + (0.85 - mean) ** 2) / 2)  # sample std: 0.18028
    assert (c["replicates"], c["missing"]) == (3, 1)
    assert c["val_acc_mean"] == pytest.approx(0.65) and c["val_acc_std"] == pytest.approx(0.1802776, abs=1e-6)
    assert c["val_acc_std"] == pytest.approx(std)
    assert c["protocol"] == "common (n7 h8 d30 f0)"
    assert cells[(10, 3)]["val_acc_std"] == 0.0 and cells[(10, 3)]["replicates"] == 1  # one replicate: std 0
    assert [k for k in cells] == [(10, 3), (10, 7), (25, 7)]  # size first, then the protocol


def test_seeds_are_replicates_too(tmp_path):
    paths = write(tmp_path / "s", {ft(0, 10, 7, seed=0): 0.2, ft(0, 10, 7, seed=1): 0.4, ft(1, 10, 7, seed=0): 0.6})
    (c,) = cells_of(paths)
    assert c["replicates"] == 3 and c["val_acc_mean"] == pytest.approx(0.4) and c["val_acc_std"] == pytest.approx(0.2)


def test_by_any_axes_averages_over_the_rest(tmp_path):
    paths = write(tmp_path / "s", {ft(0, 10, 6, h=1): 0.2, ft(0, 10, 6, h=8): 0.4, ft(1, 10, 6, h=8): 0.9,
                                   ft(0, 10, 3, h=1): 0.1, ft(0, 25, 6, h=1): None})
    by_n = {c["transfer_layers"]: c for c in cells_of(paths, "transfer_layers")}
    assert set(by_n) == {3, 6} and "protocol" not in by_n[6]
    assert (by_n[6]["replicates"], by_n[6]["missing"]) == (3, 1) and by_n[6]["val_acc_mean"] == pytest.approx(0.5)
    by_h = {(c["examples_per_class"], c["high_lr_layers"]): c for c in cells_of(paths, "examples_per_class,high_lr_layers")}
    assert by_h[(10, 1)]["val_acc_mean"] == pytest.approx(0.15) and by_h[(10, 8)]["val_acc_mean"] == pytest.approx(0.65)
    assert by_h[(25, 1)]["replicates"] == 0 and by_h[(25, 1)]["missing"] == 1


def test_unknown_axis_is_one_line_exit_2(tmp_path, cli):
    with pytest.raises(ConfigError, match="--by: unknown axis 'layers'.*choose from"):
        parse_by("layers")
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5})
    out = cli("collect", paths.dir, "--by", "transfer_layers,layers")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "layers" in out.stderr
    out = cli("collect", paths.dir, "--view", "tabel2")
    assert out.returncode == 2 and "unknown view 'tabel2'" in out.stderr


def test_curves_by_hand(tmp_path):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5, ft(1, 10, 7): None}, records=2)
    for split, accs in ((0, [0.1, 0.3]), (1, [0.2])):  # split 1 was cut after epoch 1
        m = paths.task(ft(split, 10, 7).task_id).metrics
        m.write_text("".join(json.dumps({"epoch": e + 1, "val_acc": a, "val_loss": 1.0}) + "\n" for e, a in enumerate(accs)))
    (curve,) = merge_metrics(read_study(paths), jobs=1)
    rows = list(curve.rows())
    assert [(r["epoch"], r["replicates"]) for r in rows] == [(1, 2), (2, 1)]
    assert rows[0]["val_acc_mean"] == pytest.approx(0.15) and rows[0]["val_acc_std"] == pytest.approx(math.sqrt(0.005))
    assert rows[1]["val_acc_mean"] == pytest.approx(0.3) and rows[1]["val_acc_std"] == 0.0
    assert rows[0]["train_loss_mean"] is None  # no record had it


def _table2(tmp_path, results, dataset=None):
    paths = write(tmp_path / "s", results)
    return {r["examples_per_class"]: r for r in reports.table2(cells_of(paths), dataset).rows}, paths


def test_table2_best_protocol_per_size(tmp_path):
    t2, _ = _table2(tmp_path, {ft(0, 10, 7): 0.3, ft(1, 10, 7): 0.5, ft(0, 10, 5): 0.45, ft(1, 10, 5): 0.47,
                               ft(0, 25, 7): 0.6, ft(0, 25, 0): 0.2})
    assert t2[10]["best"] == "n5 h8 d30 f0" and t2[10]["val_acc_mean"] == pytest.approx(0.46)
    assert t2[10]["runner_up"] == "common (n7 h8 d30 f0)" and t2[10]["margin"] == pytest.approx(0.06)
    assert t2[10]["transfer_layers"] == 5 and not t2[10]["tie"]
    assert t2[25]["best"] == "common (n7 h8 d30 f0)" and t2[25]["margin"] == pytest.approx(0.4)


def test_table2_ties_are_all_named(tmp_path):
    t2, _ = _table2(tmp_path, {ft(0, 10, 7): 0.25, ft(1, 10, 7): 0.75, ft(0, 10, 5): 0.5, ft(1, 10, 5): 0.5,
                               ft(0, 10, 3): 0.1})
    row = t2[10]
    assert row["tie"] and row["leader"] == "n5 h8 d30 f0 = common (n7 h8 d30 f0)" and row["best"] is None
    assert row["transfer_layers"] == [5, 7] and row["high_lr_layers"] == 8  # differing fields listed
    assert row["runner_up"] == "n3 h8 d30 f0" and row["margin"] == pytest.approx(0.4)
    view = reports.table2(cells_of(write(tmp_path / "t", {ft(0, 10, 7): 0.5, ft(0, 10, 5): 0.5})))
    assert any("2 protocols tie at 50.00 %" in n for n in view.notes)


def test_table2_missing_cells(tmp_path):
    t2, paths = _table2(tmp_path, {ft(0, 10, 7): 0.3, ft(1, 10, 7): None, ft(0, 10, 5): None,  # 10: n5 has nothing yet
                                   ft(0, 25, 7): None})  # 25: no cell has a result
    assert t2[10]["best"] == "common (n7 h8 d30 f0)" and t2[10]["runner_up"] is None and t2[10]["margin"] is None
    assert (t2[10]["cells"], t2[10]["unfinished_cells"], t2[10]["missing"]) == (2, 2, 1)
    assert t2[25]["best"] is None and t2[25].get("val_acc_mean") is None
    notes = " ".join(reports.table2(cells_of(paths)).notes)
    assert "10/class: 2 of 2 cells still miss tasks; the best may change" in notes
    assert "25/class: no cell has a result yet" in notes


def test_table1_losses_and_average_gap(tmp_path):
    r = lambda tr, va: {"val_acc": 0.5, "val_loss": va, "train_loss": tr, "train_acc": 0.9}  # noqa: E731
    paths = write(tmp_path / "s", {ft(0, 10, 6): r(0.4, 5.0), ft(1, 10, 6): r(0.6, 6.0), ft(0, 25, 6): r(0.5, 4.0),
                                   ft(0, 10, 7): r(0.3, 6.5), ft(0, 10, 6, h=1): r(9.0, 9.0)})  # h = 1: not 3.1's
    rows = {row["transfer_layers"]: row for row in reports.table1(cells_of(paths)).rows}
    assert set(rows) == {6, 7}
    six = rows[6]
    assert six["train_loss_10"] == pytest.approx(0.5) and six["val_loss_10"] == pytest.approx(5.5)
    assert six["gap"] == pytest.approx(((5.5 - 0.5) + (4.0 - 0.5)) / 2)
    assert rows[7]["gap"] == pytest.approx(6.2) and rows[7].get("val_loss_25") is None
    assert "paper_gap" not in six  # fashion-mnist: no published numbers beside it


def test_compare_relative_improvement(tmp_path):
    paths = write(tmp_path / "s", {ft(0, 10, 0): 0.2, ft(0, 10, 7): 0.25, ft(0, 10, 6, h=1, d=10, f=6): 0.37,
                                   ft(0, 10, 5): 0.4})
    (row,) = reports.compare(cells_of(paths)).rows
    assert (row["scratch_mean"], row["common_mean"], row["optimal_mean"]) == (0.2, 0.25, 0.37)
    assert row["optimal_vs_common"] == pytest.approx(48.0) and row["optimal_vs_scratch"] == pytest.approx(85.0)
    assert row["common_vs_scratch"] == pytest.approx(25.0)
    assert row["best"] == "n5 h8 d30 f0" and row["leader_vs_common"] == pytest.approx(60.0)


def test_paper_numbers_beside_ours_for_imagenet(tmp_path):
    im = lambda *a, **k: ft(*a, dataset="imagenet", **k)  # noqa: E731
    paths = write(tmp_path / "s", {im(0, 10, 7): 0.2, im(1, 10, 7): 0.22, im(0, 10, 6, h=1, d=10, f=6): 0.31,
                                   im(0, 10, 5): 0.234})
    c = collect(paths)
    assert c.dataset == "imagenet"
    rows = {r["quantity"]: r for r in reports.paper_numbers(c.protocol_cells, c.dataset).rows}
    common = rows["common protocol at 10/class (%)"]
    assert common["paper"] == 20.9 and common["ours"] == pytest.approx(21.0) and common["difference"] == pytest.approx(0.1)
    rel = rows["optimal vs common at 10/class (relative %)"]
    assert rel["paper"] == 47.8 and rel["ours"] == pytest.approx((0.31 / 0.21 - 1) * 100)
    assert rows["Table 2: best accuracy at 10/class (%)"]["ours"] == pytest.approx(31.0)
    assert rows["Table 2: best accuracy at 25/class (%)"]["ours"] is None
    t2 = reports.table2(c.protocol_cells, c.dataset).rows[0]
    assert (t2["paper_transfer_layers"], t2["paper_initial_decay_epochs"], t2["paper_frozen_layers"], t2["paper_val_acc"]) == (6, 10, 6, 30.8)
    t1 = {r["transfer_layers"]: r for r in reports.table1(c.protocol_cells, c.dataset).rows}
    assert t1[7]["paper_val_loss_10"] == 6.26 and t1[7]["paper_gap"] == 4.72
    # a Fashion-MNIST study is not set beside ImageNet's numbers
    other = collect(write(tmp_path / "f", {ft(0, 10, 7): 0.2}))
    view = reports.paper_numbers(other.protocol_cells, other.dataset)
    assert all(r["ours"] is None for r in view.rows) and "fashion-mnist" in view.notes[-1]


# ---------------------------------------------------------------- views that say what they hold
def test_view_all_includes_paired(tmp_path, cli):
    from hpcxfer.collect.build import parse_views

    assert parse_views(["all"]) == ["cells", "table1", "table2", "compare", "paired", "paper", "incomplete"]
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5, ft(1, 10, 7): 0.6, ft(0, 10, 0): 0.4, ft(1, 10, 0): 0.45})
    out = cli("collect", paths.dir, "--view", "all", "--format", "json")
    assert out.returncode == 0, out.stderr
    views = json.loads(out.stdout)["views"]
    # a finished Fashion-MNIST study: no paper view, no incomplete view; the paired one is there
    assert list(views) == ["cells", "table1", "table2", "compare", "paired"]
    assert views["paired"]["rows"][0]["mean_diff"] == pytest.approx(-0.125)


def test_paper_view_of_another_data_set_is_one_note_not_rows_of_dashes(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.2})
    c = collect(paths)
    view = reports.paper_numbers(c.protocol_cells, c.dataset)
    assert view.rows == [] and len(view.notes) == 1
    assert "ImageNet's" in view.notes[0] and "fashion-mnist" in view.notes[0]
    out = cli("collect", paths.dir, "--view", "paper")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"The paper's numbers beside ours: {view.notes[0]}"]
    assert "-" * 3 not in out.stdout


def test_an_empty_view_is_one_line_not_an_empty_table(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.2, ft(1, 10, 7): 0.3})
    out = cli("collect", paths.dir, "--view", "incomplete")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Tasks without a result: every task has its result\n"
    md = cli("collect", paths.dir, "--view", "incomplete", "--format", "markdown").stdout
    assert md == "### Tasks without a result\n\n_every task has its result_\n"
    csv_out = cli("collect", paths.dir, "--view", "incomplete", "--format", "csv").stdout
    assert csv_out == "task_id,stage,state,epoch,detail,log\n"  # CSV keeps its header
