"""The study record on disk: a re-submit rewrites only what changed, and status reads
sub-grids from the study, not from its grid file."""

from __future__ import annotations

import yaml

import slurm_standin
from conftest import TINY_GRID, merge, prepare_study
from hpcxfer.fileio import atomic_write_json, read_json
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


def test_status_shows_the_sub_grids_recorded_at_submit_whatever_becomes_of_the_grid_file(write_grid, cli, tmp_path):
    """Sub-grid membership is the study's own record (study.json, written at submit):
    moving the grid file away, or editing its experiments, changes nothing status shows."""
    env = slurm_standin.install(tmp_path)
    grid = write_grid()
    assert cli("submit", grid, "--backend", "slurm", env=env).returncode == 0
    study = tmp_path / "runs" / "tiny"
    recorded = read_json(study / "study.json")["subgrids"][str(grid)]
    assert [(name, len(ids)) for name, ids in recorded] == [("named", 2), ("n", 1)]
    before = cli("status", study, env=env).stdout
    assert "  named " in before and "  n " in before, before

    edited = merge(TINY_GRID, {"root": str(tmp_path / "runs"),
                               "experiments": [{"name": "renamed", "protocol": ["common"]}]})
    grid.rename(tmp_path / "moved.yaml")
    assert cli("status", study, env=env).stdout == before
    grid.write_text(yaml.safe_dump(edited))
    assert cli("status", study, env=env).stdout == before


def test_a_study_that_recorded_no_sub_grids_still_shows_its_status(write_grid, cli, tmp_path):
    """A study written before sub-grids were recorded: status shows its stages, without
    reading the grid file for sub-grids."""
    grid = write_grid()
    paths = prepare_study(grid)
    info = read_json(paths.study_json)
    del info["subgrids"]
    atomic_write_json(paths.study_json, info)
    out = cli("status", paths.dir)
    assert out.returncode == 0 and "finetune" in out.stdout and "  named " not in out.stdout, out.stdout
