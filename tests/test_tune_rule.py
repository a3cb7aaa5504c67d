"""The decision at a rung: a paired comparison with the leader over every (split, seed)."""

from __future__ import annotations

import pytest

from hpcxfer.tune.rule import decide


def kept(standings):
    return [s.candidate for s in standings if s.kept]


def test_consistently_behind_goes_before_an_uncertain_candidate():
    # b's mean is above c's, but b is behind the leader by 0.01 on every split (known to be
    # worse), while c beats the leader on one split (it may be the best): c goes on.
    m = {"a": {0: 0.80, 1: 0.60, 2: 0.70}, "b": {0: 0.79, 1: 0.59, 2: 0.69}, "c": {0: 0.99, 1: 0.40, 2: 0.67}}
    got = decide(m, keep=2)
    assert [s.candidate for s in got] == ["a", "c", "b"]
    assert kept(got) == ["a", "c"]
    assert got[2].pairs == 3 and got[2].mean_diff == pytest.approx(-0.01)
    assert got[2].behind  # 3 identical differences: an interval of width 0, below 0
    assert not got[1].behind and got[1].mean < got[2].mean


def test_the_comparison_is_paired_over_the_pairs_both_hold():
    # a missed split 2 (a failed task). b leads on its mean, which split 2's high value lifts;
    # paired on the splits both hold, a is ahead of b by 0.1 on each, so a ranks first.
    m = {"a": {0: 0.8, 1: 0.7}, "b": {0: 0.7, 1: 0.6, 2: 0.99}, "c": {0: 0.6, 1: 0.5, 2: 0.89}}
    got = decide(m, keep=2)
    assert [s.candidate for s in got] == ["a", "b", "c"] and kept(got) == ["a", "b"]
    assert got[1].mean > got[0].mean  # b is the leader everyone is compared with
    assert got[0].pairs == 2 and got[0].mean_diff == pytest.approx(0.1) and not got[0].behind
    assert got[2].pairs == 3 and got[2].mean_diff == pytest.approx(-0.1) and got[2].behind


def test_lower_is_better_for_loss_and_failed_members_give_no_evidence():
    m = {"a": {0: 0.5, 1: 0.6}, "b": {0: 0.4, 1: 0.5}, "c": {0: float("nan"), 1: None}, "d": {}}
    got = decide(m, keep=1, higher_is_better=False)
    assert got[0].candidate == "b" and kept(got) == ["b"]
    assert [s.candidate for s in got][-2:] == ["c", "d"] and got[-1].mean is None


def test_one_pair_cannot_tell_so_it_is_tied_and_order_is_deterministic():
    m = {"x": {0: 0.5}, "y": {0: 0.5}, "z": {0: 0.6}}
    got = decide(m, keep=2)
    assert [s.candidate for s in got] == ["z", "x", "y"]
    assert not any(s.behind for s in got) and kept(got) == ["z", "x"]
    assert decide(dict(reversed(m.items())), keep=2) == got
