"""Runtime settings read back by the worker, and the data settings in a task's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import prepare_study
from hpcxfer.errors import ConfigError
from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.schema import Grid, RuntimeSpec
from hpcxfer.grid.task import Task

REPO = Path(__file__).resolve().parents[1]

IMAGENET = {"study": "ids", "data": {"dataset": "imagenet", "path": "/data/imagenet"}, "arch": "alexnet",
            "finetune": {"split": [0, 1], "examples_per_class": [10, "full"], "protocol": ["common", "optimal"],
                         "epochs": 30}}


def ids_digest(grid: Grid) -> tuple[int, str]:
    ids = [t.task_id for t in expand(grid)]
    return len(ids), hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]


# Ids computed by hpcxfer before image_size and crop were task fields (commit 5193a58):
# an existing study's submit must find every one of its tasks again.
def test_ids_of_grids_with_default_data_settings_are_unchanged():
    assert ids_digest(Grid.model_validate(IMAGENET)) == (10, "fd5da810717fff32")
    quickstart = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    del quickstart["finetune"]["seed"]  # the quick start as it was then, with one seed
    assert ids_digest(Grid.model_validate(quickstart)) == (26, "4a03eeb7accfbd0b")
    assert ids_digest(load_grid(REPO / "jobs" / "plested2019" / "all.yaml")) == (1180, "3fc89e90c2b3f582")
    first = expand(Grid.model_validate(IMAGENET))[2]
    assert first.task_id == "ft-s0-x10-n7h8d30f0-fc3739dd78" and "crop" not in first.to_dict()


def test_crop_and_image_size_are_part_of_a_folder_tasks_identity():
    base = expand(Grid.model_validate(IMAGENET))
    for data in ({"crop": 192}, {"image_size": 320}):
        other = expand(Grid.model_validate({**IMAGENET, "data": {**IMAGENET["data"], **data}}))
        assert len(other) == len(base)
        assert {t.task_id for t in other}.isdisjoint(t.task_id for t in base)
        assert all(t.to_dict()[k] == v for t in other for k, v in data.items())
        assert all(Task.from_record(t.to_dict()) == t for t in other)  # tasks.jsonl reads them back
    # Given at its default, a setting changes nothing.
    same = expand(Grid.model_validate({**IMAGENET, "data": {**IMAGENET["data"], "crop": 224, "image_size": 256}}))
    assert [t.task_id for t in same] == [t.task_id for t in base]


def test_array_data_sets_ignore_crop_and_keep_their_ids(write_grid):
    plain = [t.task_id for t in expand(load_grid(write_grid()))]
    cropped = [t.task_id for t in expand(load_grid(write_grid({"data": {"crop": 24, "image_size": 28}},
                                                              name="c.yaml")))]
    assert cropped == plain


def test_settings_state_the_schemas_defaults_and_fields():
    assert RuntimeSpec().settings() == RuntimeSettings()
    assert [f.name for f in dataclasses.fields(RuntimeSettings)] == list(RuntimeSpec.model_fields)
    spec = RuntimeSpec.model_validate({"eval_every": 3, "amp": "bf16", "decode_cache": "off"})
    assert RuntimeSettings.from_record(spec.model_dump()) == spec.settings()
    assert spec.settings().eval_every == 3 and spec.settings().loader_workers == 4


def test_a_task_records_runtime_is_checked_when_read():
    assert RuntimeSettings.from_record({}) == RuntimeSettings()  # a task.json from before a setting
    assert RuntimeSettings.from_record({"compile": True}).compile is True
    with pytest.raises(ConfigError) as e:
        RuntimeSettings.from_record({"eval_evry": 2}, "t/task.json")
    assert str(e.value).startswith("t/task.json: runtime.eval_evry: unknown setting; valid settings: eval_every")
    for bad, kind in (({"eval_every": "2"}, "an integer"), ({"tensorboard": 1}, "true or false"),
                      ({"checkpoint_minutes": True}, "a number")):
        with pytest.raises(ConfigError, match=f"t/task.json: runtime.{next(iter(bad))}: .* is not {kind}"):
            RuntimeSettings.from_record(bad, "t/task.json")


def test_worker_refuses_an_unknown_setting_with_exit_2_and_writes_nothing(write_grid, cli):
    paths = prepare_study(write_grid())
    pre = expand(load_grid(write_grid(name="again.yaml")))[0]
    tp = paths.task(pre.task_id)
    config = read_json(tp.config)
    tp.config.write_text(json.dumps({**config, "runtime": {**config["runtime"], "eval_evry": 2}}))
    before = sorted(p.name for p in tp.dir.iterdir())
    out = cli("run-task", paths.dir, pre.task_id)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tp.config}: runtime.eval_evry: unknown setting; "
                                               f"valid settings: {', '.join(RuntimeSpec.model_fields)}"]
    assert sorted(p.name for p in tp.dir.iterdir()) == before


def test_the_worker_does_not_import_pydantic():
    code = ("import sys, hpcxfer.worker.main, hpcxfer.worker.train, hpcxfer.worker.group; "
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
