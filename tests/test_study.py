"""The study record on disk: a re-submit rewrites only what changed."""

from __future__ import annotations

from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import load_index, study_paths, write_study


def test_resubmit_rewrites_only_changed_task_configs(write_grid):
    grid = load_grid(write_grid())
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    config = paths.task(tasks[1].task_id).config
    first = config.stat().st_mtime_ns

    write_study(paths, load_grid(write_grid(name="same.yaml")), tasks)
    assert config.stat().st_mtime_ns == first  # identical: not rewritten

    changed = load_grid(write_grid({"runtime": {"eval_every": 7}}, name="changed.yaml"))
    write_study(paths, changed, expand(changed))
    assert read_json(config)["runtime"]["eval_every"] == 7  # same task id, new runtime
    assert [t["task_id"] for t in load_index(paths)] == [t.task_id for t in tasks]  # no task twice
