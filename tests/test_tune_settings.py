"""The grid's `search:` section: bad input is one line naming the file and the field, exit
status 2, nothing written; good input resolves to rungs and a price known in advance."""

from __future__ import annotations

import pytest

from conftest import TINY_GRID, merge
from hpcxfer import cli
from hpcxfer.grid import expand, load_grid
from hpcxfer.tune.settings import Search, alive_per_stage, default_rungs, images_share, resolve

#: TINY_GRID with four protocols at one size, two splits, 12 epochs.
FOUR = merge(TINY_GRID, {
    "finetune": {"split": [0, 1], "epochs": 12},
    "experiments": [{"name": "named", "protocol": ["scratch", "common"]},
                    {"name": "n", "transfer_layers": [3, 5], "frozen_layers": 0, "high_lr_layers": 8}],
})


@pytest.mark.parametrize("search, field, words", [
    ({"eta": 1}, "search.eta", "1 is not in 2..1000"),
    ({"eta": 2.5}, "search.eta", "2.5 is not an integer"),
    ({"eta": [2, 1], "rungs": [2, 4]}, "search.eta", "1 is not in 2..1000: a rung keeps the best 1/eta (item 1"),
    ({"eta": []}, "search.eta", "a list of 0 values"),
    ({"eta": [2, 4]}, "search.eta", "a list of eta values needs search.rungs, one eta per rung"),
    ({"eta": [2, 4, 4], "rungs": [2, 4]}, "search.eta", "3 values for 2 rungs"),
    ({"rungs": [4, 4]}, "search.rungs", "strictly increasing"),
    ({"rungs": [6, 3]}, "search.rungs", "strictly increasing"),
    ({"rungs": []}, "search.rungs", "non-empty"),
    ({"rungs": [0]}, "search.rungs", "not an epoch"),
    ({"rungs": [3, 13]}, "search.rungs", "beyond the fine-tuning tasks' 12 epochs"),
    ({"rungs": [3, 7]}, "search.rungs", "rung 3 is not an epoch the tasks evaluate at (runtime.eval_every 2)"),
    ({"metric": "top5"}, "search.metric", "choose from val_acc, val_loss"),
    ({"min_survivors": 0}, "search.min_survivors", "greater than or equal to 1"),
    ({"patience": 3}, "search", "unknown key 'patience'"),
])
@pytest.mark.parametrize("command", ["tune", "plan"])
def test_bad_search_is_one_line_exit_2_nothing_written(write_grid, tmp_path, capsys, search, field, words, command):
    path = write_grid(merge(FOUR, {"search": search, "runtime": {"eval_every": 2}}), base={})
    argv = [command, str(path), *(["--dry-run"] if command == "tune" else [])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{path}: {field}: " in err[0] and words in err[0], err[0]
    assert not (tmp_path / "runs").exists()


def test_one_protocol_per_size_is_refused(write_grid, tmp_path, capsys):
    one = merge(FOUR, {"experiments": None, "finetune": {"protocol": ["common"]}, "search": {}})
    path = write_grid(one, base={})
    assert cli.main(["tune", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: search: examples_per_class 10 has one protocol" in err
    assert not (tmp_path / "runs").exists()


def test_defaults_resolve_against_the_tasks(write_grid):
    grid = load_grid(write_grid(FOUR, base={}))
    s = resolve(grid, expand(grid))
    # neither eta nor rungs: E/8 and E/4 (2 and 3 of 12), keeping half, then a twelfth
    assert s == Search(etas=(2, 12), rungs=(2, 3), metric="val_acc", min_survivors=1, epochs=12)
    assert default_rungs(3, 40) == (5, 14)
    assert default_rungs(2, 2) == (1,)
    assert default_rungs(4, 1) == (1,)
    assert default_rungs(3, 40, eval_every=4) == (8, 16)  # 5 and 14, each up to an evaluated epoch
    assert default_rungs(4, 40, eval_every=20) == (20,)
    assert default_rungs(4, 10, eval_every=20) == (10,)  # the only evaluated epoch is the last


@pytest.mark.parametrize("search, rungs, etas", [
    ({"eta": 3}, (2, 4), (3, 3)),  # one eta: the classic ladder E/eta², E/eta at every rung's eta
    ({"rungs": [2, 4, 8]}, (2, 4, 8), (2, 2, 12)),  # explicit rungs: gentle, then the hard cut at the last
    ({"rungs": [2, 4], "eta": [3, 5]}, (2, 4), (3, 5)),
])
def test_eta_per_rung(write_grid, search, rungs, etas):
    grid = load_grid(write_grid(merge(FOUR, {"search": search, "runtime": {"eval_every": 2}}), base={}))
    s = resolve(grid, expand(grid))
    assert (s.rungs, s.etas) == (rungs, etas)


def test_survivors_and_price_are_known_in_advance(write_grid):
    grid = load_grid(write_grid(merge(FOUR, {"search": {"eta": 2, "rungs": [2, 6]}}), base={}))
    tasks = expand(grid)
    s = resolve(grid, tasks)
    assert alive_per_stage(s, 4) == [(4, 2), (2, 6), (1, 12)]
    assert alive_per_stage(Search((3, 3), (4, 12), "val_loss", 2, 12), 12) == [(12, 4), (4, 12)]
    # one eta per rung: 12 -> 6 at the first (eta 2), 6 -> 1 at the second (eta 12)
    assert alive_per_stage(Search((2, 12), (5, 10), "val_acc", 1, 40), 12) == [(12, 5), (6, 10), (1, 40)]
    searched, full = images_share(s, tasks, lambda t: 50.0)
    # 4 candidates x 2 splits x 12 epochs x 50 images; the search: 4 x 2, 2 x 4, 1 x 6 epochs per split
    assert full == 4 * 2 * 12 * 50
    assert searched == (4 * 2 + 2 * 4 + 1 * 6) * 2 * 50


def test_plan_and_dry_run_show_the_price(write_grid, tmp_path, capsys):
    path = write_grid(merge(FOUR, {"search": {"eta": 2, "rungs": [2, 6]}}), base={})
    assert cli.main(["tune", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rungs at epochs 2 (eta 2), 6 (eta 2) of 12" in out
    assert "10 per class: 4 candidates x 2 replicates; 4 to epoch 2, 2 to epoch 6, 1 to epoch 12" in out
    assert "(45.8 %)" in out  # 22 of 48 candidate-epochs
    assert cli.main(["plan", str(path)]) == 0
    assert "(45.8 %)" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
