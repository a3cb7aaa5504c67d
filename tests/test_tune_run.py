"""A search end to end on a tiny real study: rungs are epochs of the grid's own tasks, the
finalists' results are the full grid's, the winner is the grid's best or tied with it."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_GRID, merge
from hpcxfer.collect.paired import paired_stats
from hpcxfer.grid.protocols import PROTOCOL_FIELDS
from hpcxfer.layout import StudyPaths

#: Four protocols at one size, two splits, 4 epochs; rungs after epochs 1 and 2.
GRID = merge(TINY_GRID, {
    "finetune": {"split": [0, 1], "epochs": 4},
    "experiments": [{"name": "named", "protocol": ["scratch", "common"]},
                    {"name": "n", "transfer_layers": [3, 5], "frozen_layers": 0, "high_lr_layers": 8}],
    "search": {"eta": 2, "rungs": [1, 2]},
})

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "epoch")


def results(paths: StudyPaths) -> dict[str, dict]:
    out = {}
    for d in paths.tasks_dir.iterdir():
        if (d / "result.json").is_file():
            out[d.name] = json.loads((d / "result.json").read_text())
    return out


@pytest.mark.slow
def test_search_trains_rungs_of_the_grids_tasks(write_grid, tmp_path, cli):
    search_grid = write_grid(GRID, base={})
    run = cli("tune", search_grid, "--backend", "local", "--wait", timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    paths = StudyPaths.of(tmp_path / "runs", "tiny")
    rung0 = json.loads(paths.rung_decision(0).read_text())
    rung1 = json.loads(paths.rung_decision(1).read_text())
    assert [s["kept"] for s in rung0["sizes"]["10"]] == [True, True, False, False]
    assert [s["kept"] for s in rung1["sizes"]["10"]] == [True, False]
    finalists = rung1["sizes"]["10"][0]["tasks"]
    pruned = [t for s in rung0["sizes"]["10"] + rung1["sizes"]["10"] if not s["kept"] for t in s["tasks"]]
    assert len(finalists) == 2 and len(pruned) == 6
    searched = results(paths)
    assert sorted(t for t in searched if t.startswith("ft-")) == sorted(finalists)
    for t in pruned:  # stopped at its rung, with its partial metrics, not failed
        tp = paths.task(t)
        info = json.loads(tp.pruned.read_text())
        epochs = [json.loads(line)["epoch"] for line in tp.metrics.read_text().splitlines()]
        assert epochs == list(range(1, info["epoch"] + 1))
        assert not tp.failed.exists() and not tp.rung.exists() and tp.checkpoint.exists()
    # collect --view tune: the winner, its protocol, the images the search used
    view = cli("collect", paths.dir, "--view", "tune", "--format", "json")
    assert view.returncode == 0, view.stderr
    (row,) = json.loads(view.stdout)["views"]["tune"]["rows"]
    winner = rung1["sizes"]["10"][0]
    assert row["examples_per_class"] == 10 and row["winner"] == winner["candidate"]
    config = json.loads(paths.task(finalists[0]).config.read_text())
    assert [row[f] for f in PROTOCOL_FIELDS] == [config[f] for f in PROTOCOL_FIELDS]
    assert row["images_share"] == (4 * 1 + 2 * 1 + 1 * 2) / (4 * 4)  # candidate-epochs of 4 x 4
    assert row["runner_up"] == rung1["sizes"]["10"][1]["candidate"]
    # re-running resumes: every rung is decided, nothing trains again
    again = cli("tune", search_grid, "--backend", "local", "--wait", timeout=600)
    assert again.returncode == 0, again.stderr
    assert results(paths) == searched

    # the full grid in its own study: the finalists' metrics are the same, bit for bit
    full_grid = write_grid(merge(GRID, {"study": "full", "search": None}), name="full.yaml", base={})
    full = cli("submit", full_grid, "--backend", "local", "--wait", timeout=600)
    assert full.returncode == 0, full.stdout + full.stderr
    grid_results = results(StudyPaths.of(tmp_path / "runs", "full"))
    assert len([t for t in grid_results if t.startswith("ft-")]) == 8
    for t in finalists:
        assert {k: searched[t][k] for k in METRICS if k in searched[t]} == \
            {k: grid_results[t][k] for k in METRICS if k in grid_results[t]}
    # the winner is the grid's best protocol, or tied with it (the paired interval includes 0)
    by_cand = {}
    for s in rung0["sizes"]["10"]:
        by_cand[s["candidate"]] = [grid_results[t]["val_acc"] for t in s["tasks"]]
    winner = rung1["sizes"]["10"][0]["candidate"]
    best = max(by_cand, key=lambda c: sum(by_cand[c]))
    if winner != best:
        stats = paired_stats([a - b for a, b in zip(by_cand[winner], by_cand[best])])
        assert stats["ci_low"] <= 0 <= stats["ci_high"], (winner, best, stats)
