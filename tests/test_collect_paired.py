"""Paired differences (`collect --view paired`) and Table 2's tie rule, on small studies
whose every number is worked by hand; the interval's t quantile against scipy's."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import pytest
from collect_study import ft, write
from scipy import stats

from hpcxfer.collect import read_study, reports
from hpcxfer.collect.aggregate import summarize
from hpcxfer.collect.paired import paired_rows, t_quantile
from hpcxfer.errors import ConfigError

COMMON, SCRATCH = "common (n7 h8 d30 f0)", "scratch (n0 h8 d30 f0)"


@pytest.mark.parametrize("df", [*range(1, 41), 60, 100, 1000, 10**5])
def test_t_quantile_is_scipys(df):
    for p in (0.975, 0.995, 0.9, 0.6, 0.025):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-10)


def test_t_quantile_refuses_what_has_none():
    for p, df in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def _interval(diffs):
    n, m, sd = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


# Size 10: splits 0..2, and split 0 has a second seed: four replicates a protocol.
# common's split 2 has no result, so scratch and n5 pair with common on three runs only.
# Size 25: one split each: one pair, no interval.
STUDY = {
    ft(0, 10, 7): 0.60, ft(1, 10, 7): 0.70, ft(2, 10, 7): None, ft(0, 10, 7, seed=1): 0.50,
    ft(0, 10, 0): 0.40, ft(1, 10, 0): 0.65, ft(2, 10, 0): 0.30, ft(0, 10, 0, seed=1): 0.45,
    ft(0, 10, 5): 0.65, ft(1, 10, 5): 0.70, ft(2, 10, 5): 0.20, ft(0, 10, 5, seed=1): 0.58,
    ft(0, 25, 7): 0.80, ft(0, 25, 0): 0.70,
}


def _json(cli, paths, *args):
    out = cli("collect", paths.dir, "--view", "paired", *args, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["views"]["paired"]


def test_paired_view_by_hand_against_scratch(tmp_path, cli):
    paths = write(tmp_path / "s", STUDY)
    view = _json(cli, paths, "--ref", "scratch")
    rows = {(r["examples_per_class"], r["protocol"]): r for r in view["rows"]}
    assert list(rows) == [(10, "n5 h8 d30 f0"), (10, COMMON), (25, COMMON)]
    # n5 - scratch, pairs (split, seed) (0,0) (0,1) (1,0) (2,0): +0.25 +0.13 +0.05 -0.10
    n5 = rows[(10, "n5 h8 d30 f0")]
    m, lo, hi = _interval([0.25, 0.13, 0.05, -0.10])
    assert n5["pairs"] == 4 and n5["replicates"] == 4 and n5["ref_replicates"] == 4
    assert n5["mean_diff"] == pytest.approx(0.0825) and m == pytest.approx(0.0825)
    assert (n5["ci_low"], n5["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert lo < 0 < hi  # 3 wins of 4, yet within noise
    assert (n5["wins"], n5["losses"], n5["ties"]) == (3, 1, 0)
    assert n5["protocol_mean"] == pytest.approx(0.5325) and n5["ref_mean"] == pytest.approx(0.45)
    # common - scratch: split 2 has no common result -> 3 pairs: +0.20 +0.05 +0.05
    common = rows[(10, COMMON)]
    m, lo, hi = _interval([0.20, 0.05, 0.05])
    assert (common["pairs"], common["replicates"], common["ref_replicates"]) == (3, 3, 4)
    assert common["mean_diff"] == pytest.approx(0.1)
    assert (common["ci_low"], common["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert common["ref_mean"] == pytest.approx((0.40 + 0.45 + 0.65) / 3)  # over the pairs only
    assert (common["wins"], common["losses"], common["ties"]) == (3, 0, 0)
    one = rows[(25, COMMON)]  # one pair: a difference, no interval, no crash
    assert one["pairs"] == 1 and one["mean_diff"] == pytest.approx(0.1)
    assert one["ci_low"] is None and one["ci_high"] is None and one["sd_diff"] is None
    assert any("fewer than two pairs at 25/class" in n for n in view["notes"])
    assert any("Student's t" in n and "paired by split and seed" in " ".join(view["notes"]) for n in view["notes"])
    assert view["title"] == "Paired differences from scratch, per size"


def test_default_reference_is_common_and_ties_count(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5, ft(1, 10, 7): 0.6, ft(2, 10, 7): 0.7,
                                   ft(0, 10, 0): 0.5, ft(1, 10, 0): 0.4, ft(2, 10, 0): 0.8})
    view = _json(cli, paths)
    (row,) = view["rows"]
    assert row["protocol"] == SCRATCH and row["ref"] == COMMON
    assert (row["wins"], row["losses"], row["ties"]) == (1, 1, 1)
    m, lo, hi = _interval([0.0, -0.2, 0.1])
    assert row["mean_diff"] == pytest.approx(m) and row["ci_low"] == pytest.approx(lo)


def test_any_label_is_a_reference_and_a_study_without_common_or_scratch(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 5): 0.5, ft(1, 10, 5): 0.6, ft(0, 10, 3): 0.4, ft(1, 10, 3): 0.3})
    assert _json(cli, paths)["rows"] == []  # no default reference: an empty view that says so
    out = cli("collect", paths.dir, "--view", "paired")
    assert out.returncode == 0 and "name the reference with --ref" in out.stdout
    (row,) = _json(cli, paths, "--ref", "n5 h8 d30 f0")["rows"]
    assert row["protocol"] == "n3 h8 d30 f0" and row["mean_diff"] == pytest.approx(-0.2) and row["pairs"] == 2


def test_unknown_ref_is_one_line_exit_2(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5, ft(0, 10, 0): 0.4, ft(0, 10, 5): 0.45})
    out = cli("collect", paths.dir, "--view", "paired", "--ref", "optimal")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert "--ref" in line and "'optimal'" in line and "common, n5 h8 d30 f0, scratch" in line
    with pytest.raises(ConfigError, match="--ref"):
        paired_rows(read_study(paths), "optimal")


def test_paired_view_in_every_format(tmp_path, cli):
    paths = write(tmp_path / "s", STUDY)
    out = cli("collect", paths.dir, "--view", "paired", "--ref", "scratch", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert out.returncode == 0 and len(rows) == 3
    assert list(rows[0])[:11] == ["examples_per_class", "protocol", "ref", "pairs", "mean_diff", "sd_diff",
                                  "ci_low", "ci_high", "wins", "losses", "ties"]
    assert rows[2]["ci_low"] == "" and rows[0]["pairs"] == "4"
    md = cli("collect", paths.dir, "--view", "paired", "--ref", "scratch", "--format", "markdown").stdout
    assert "| 10 | n5 h8 d30 f0 | 4 | 53.2 | 45.0 | +8.2 pts |" in md and "| n/a |" in md
    empty = write(tmp_path / "e", {ft(0, 10, 5): 0.5})
    out = cli("collect", empty.dir, "--view", "paired", "--format", "csv")  # no reference: still a header
    assert out.returncode == 0 and out.stdout.startswith("examples_per_class,protocol,ref,pairs,")


def _table2(paths):
    rec = read_study(paths)
    return {r["examples_per_class"]: r for r in reports.table2(summarize(rec.rows, rec.missing), None, rec.rows).rows}


def test_table2_marks_a_best_only_beyond_noise(tmp_path):
    # 10/class: n5 beats common on every split by 0.10 +- 0.01: clear.
    # 25/class: n5's mean is higher, but the pairs disagree (+0.30, -0.20, +0.05): tied within noise.
    clear = {ft(0, 10, 5): 0.61, ft(1, 10, 5): 0.40, ft(2, 10, 5): 0.79,
             ft(0, 10, 7): 0.50, ft(1, 10, 7): 0.30, ft(2, 10, 7): 0.70,
             ft(0, 25, 5): 0.80, ft(1, 25, 5): 0.40, ft(2, 25, 5): 0.75,
             ft(0, 25, 7): 0.50, ft(1, 25, 7): 0.60, ft(2, 25, 7): 0.70}
    rec = read_study(write(tmp_path / "s", clear))
    view = reports.table2(summarize(rec.rows, rec.missing), None, rec.rows)
    t2 = {r["examples_per_class"]: r for r in view.rows}
    m, lo, hi = _interval([0.11, 0.10, 0.09])
    assert t2[10]["best"] == "n5 h8 d30 f0" and t2[10]["leader"] == "n5 h8 d30 f0" and not t2[10]["within_noise"]
    assert t2[10]["pairs"] == 3 and (t2[10]["margin_ci_low"], t2[10]["margin_ci_high"]) == (
        pytest.approx(lo), pytest.approx(hi)) and lo > 0
    m, lo, hi = _interval([0.30, -0.20, 0.05])
    assert t2[25]["best"] is None and t2[25]["leader"] == "n5 h8 d30 f0" and t2[25]["within_noise"]
    assert t2[25]["margin"] == pytest.approx(0.05) and t2[25]["margin_ci_low"] == pytest.approx(lo) and lo < 0 < hi
    assert any(n.startswith("25/class: n5 h8 d30 f0 and common (n7 h8 d30 f0) are tied within the study's noise")
               for n in view.notes)
    assert not any(n.startswith("10/class") for n in view.notes)
    shown = {r[0]: r[1] for r in view.cells()}
    assert shown["10"] == "n5 h8 d30 f0" and shown["25"] == f"tied within noise: n5 h8 d30 f0, {COMMON}"


def test_table2_one_pair_is_no_evidence(tmp_path):
    t2 = _table2(write(tmp_path / "s", {ft(0, 10, 5): 0.9, ft(0, 10, 7): 0.1}))
    assert t2[10]["best"] is None and t2[10]["within_noise"] and t2[10]["pairs"] == 1
    assert t2[10]["margin_ci_low"] is None and t2[10]["margin"] == pytest.approx(0.8)


def test_compare_counts_its_replicates(tmp_path):
    rec = read_study(write(tmp_path / "s", STUDY))
    rows = {r["examples_per_class"]: r for r in reports.compare(summarize(rec.rows, rec.missing)).rows}
    assert (rows[10]["common_replicates"], rows[10]["scratch_replicates"], rows[10]["optimal_replicates"]) == (3, 4, 0)
    assert (rows[25]["common_replicates"], rows[25]["scratch_replicates"]) == (1, 1)


def test_compare_and_table2_give_one_verdict(tmp_path):
    """n5 leads at 25/class, but its paired interval against common holds zero: Table 2 and
    compare both say tied within noise, and neither calls the leader the best."""
    from hpcxfer.collect.build import build_views, collect

    study = {ft(0, 25, 5): 0.80, ft(1, 25, 5): 0.40, ft(2, 25, 5): 0.75,
             ft(0, 25, 7): 0.50, ft(1, 25, 7): 0.60, ft(2, 25, 7): 0.70,
             ft(0, 25, 0): 0.30, ft(1, 25, 0): 0.35, ft(2, 25, 0): 0.40}
    table2, compare = build_views(collect(write(tmp_path / "s", study)), ["table2", "compare"])
    (t2,), (cmp,) = table2.rows, compare.rows
    assert t2["best"] is None and cmp["best"] is None and cmp["within_noise"] and t2["within_noise"]
    assert cmp["leader"] == t2["leader"] == "n5 h8 d30 f0" and cmp["runner_up"] == COMMON
    assert cmp["margin_ci_low"] == pytest.approx(t2["margin_ci_low"])
    said = f"tied within noise: n5 h8 d30 f0, {COMMON}"
    headers = [c.header for c in compare.columns]
    assert table2.cells()[0][1] == said == compare.cells()[0][headers.index("best protocol")]
    assert not any("best found" in h for h in headers)
    assert cmp["leader_mean"] == pytest.approx(0.65) and cmp["leader_vs_common"] == pytest.approx((0.65 / 0.6 - 1) * 100)


def test_no_negative_zero_in_an_interval(tmp_path, cli):
    # differences +0.2, +0.1, +0.3 points: mean +0.2, interval [-0.048, +0.448] points
    paths = write(tmp_path / "s", {ft(0, 10, 5): 0.502, ft(1, 10, 5): 0.501, ft(2, 10, 5): 0.503,
                                   ft(0, 10, 7): 0.5, ft(1, 10, 7): 0.5, ft(2, 10, 7): 0.5})
    (row,) = _json(cli, paths)["rows"]
    assert -0.0005 < row["ci_low"] < 0
    table = cli("collect", paths.dir, "--view", "paired").stdout
    assert "[0.0, +0.4]" in table and "-0.0" not in table
    md = cli("collect", paths.dir, "--view", "table2,paired", "--format", "markdown").stdout
    assert "| [0.0, +0.4] |" in md and "-0.0 " not in md and "-0.0]" not in md
    assert "| [-0.05, +0.45] |" in md  # Table 2's margin at two decimals: a real negative stays
    from hpcxfer.collect.views import fixed, interval, signed

    assert [fixed(v, 1, sign=True) for v in (-0.04, 0.04, -0.0, -0.06, 0.06)] == ["0.0", "0.0", "0.0", "-0.1", "+0.1"]
    assert interval(-0.00049, 0.0045, 100) == "[0.0, +0.4]" and signed(-0.01) == "0.0 %"
