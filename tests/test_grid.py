"""Grid loading, validation errors and expansion (pure, content-hashed, de-duplicated)."""

from __future__ import annotations

import json

import pytest

from hpcxfer.errors import ConfigError
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.protocols import TABLE2


def test_expansion_counts_and_dependencies(write_grid):
    grid = load_grid(write_grid({"finetune": {"split": [0, 1], "examples_per_class": [10, 25, 50]}}))
    tasks = expand(grid)
    pre = [t for t in tasks if t.stage == "pretrain"]
    fine = [t for t in tasks if t.stage == "finetune"]
    assert [t.split for t in pre] == [0, 1]
    # 2 splits x 3 sizes x (scratch, common, n3) = 18
    assert len(fine) == 18
    by_split = {t.split: t.task_id for t in pre}
    assert all(t.depends_on == (by_split[t.split],) for t in fine)
    assert len({t.task_id for t in tasks}) == len(tasks)


def test_ids_stable_across_loads_and_sensitive_to_content(write_grid, tmp_path):
    a = [t.task_id for t in expand(load_grid(write_grid()))]
    b = [t.task_id for t in expand(load_grid(write_grid(name="again.yaml")))]
    assert a == b
    changed = [t.task_id for t in expand(load_grid(write_grid({"finetune": {"epochs": 4}}, name="c.yaml")))]
    assert changed[0] == a[0]  # pre-training unchanged
    assert set(changed[1:]).isdisjoint(a[1:])
    pre_changed = [t.task_id for t in expand(load_grid(write_grid({"pretrain": {"epochs": 3}}, name="d.yaml")))]
    assert set(pre_changed).isdisjoint(a)  # fine-tuning ids follow their pre-training


def test_identical_protocols_in_two_experiments_are_one_task(write_grid):
    grid = load_grid(write_grid({"experiments": [
        {"name": "named", "protocol": ["common"]},
        {"name": "n sweep", "transfer_layers": [6, 7], "high_lr_layers": 8, "initial_decay_epochs": 30},
    ]}))
    fine = [t for t in expand(grid) if t.stage == "finetune"]
    assert sorted(t.transfer_layers for t in fine) == [6, 7]


def test_optimal_resolves_per_size_to_table2(write_grid):
    grid = load_grid(write_grid({"finetune": {"examples_per_class": [10, 25, 100, 500, "full"]},
                                 "experiments": [{"protocol": ["optimal"]}]}))
    fine = {t.examples_per_class: t for t in expand(grid) if t.stage == "finetune"}
    for size, t in fine.items():
        row = TABLE2[size]
        assert (t.transfer_layers, t.initial_decay_epochs, t.frozen_layers, t.high_lr_layers) == (
            row["transfer_layers"], row["initial_decay_epochs"], row["frozen_layers"], 1)
    # a field set to `optimal` takes Table 2's value for that field only
    grid = load_grid(write_grid({"experiments": [
        {"transfer_layers": 6, "high_lr_layers": 1, "initial_decay_epochs": "optimal", "frozen_layers": [0, 3]}]},
        name="g2.yaml"))
    fine = [t for t in expand(grid) if t.stage == "finetune"]
    assert {(t.initial_decay_epochs, t.frozen_layers) for t in fine} == {(10, 0), (10, 3)}


@pytest.mark.parametrize("overrides, field, words", [
    ({"finetune": {"epochs": 3, "learning_rate": 0.1}}, "finetune", "unknown key 'learning_rate'"),
    ({"datta": {}}, None, "unknown key 'datta'"),
    ({"finetune": {"batch_size": "eight"}}, "finetune.batch_size", "not an integer"),
    ({"experiments": [{"transfer_layers": [3, 9]}]}, "experiments[0].transfer_layers", "9 is out of range 0..7"),
    ({"experiments": [{"transfer_layers": 2, "frozen_layers": 4}]}, "frozen_layers", "frozen_layers 4 > transfer_layers 2"),
    ({"finetune": {"epochs": -1}}, "finetune.epochs", "out of range"),
    ({"pretrain": {"epochs": -1}}, "pretrain.epochs", "greater than or equal to 1"),
    ({"finetune": {"examples_per_class": [10, 0]}}, "finetune.examples_per_class", "not a positive integer or 'full'"),
    ({"finetune": {"examples_per_class": "half"}}, "finetune.examples_per_class", "not a positive integer or 'full'"),
    ({"experiments": [{"protocol": "best"}]}, "experiments[0].protocol", "not a named protocol"),
    ({"experiments": [{"protocol": "common", "transfer_layers": 3}]}, "experiments[0]", "'protocol' sets"),
    ({"data": {"dataset": "mnist-ish"}}, "data.dataset", "fashion-mnist"),
    ({"study": "a b"}, "study", "pattern"),
    ({"finetune": {"epochs": None}, "experiments": [{"protocol": "common"}]}, None, "'epochs' is required"),
])
def test_validation_errors_name_file_and_field(write_grid, overrides, field, words):
    path = write_grid(overrides)
    with pytest.raises(ConfigError) as err:
        expand(load_grid(path))
    e = err.value
    assert e.path == str(path)
    if field:
        assert e.field is not None and field in e.field
    assert words in str(e)
    assert "\n" not in str(e)


def test_unknown_key_lists_valid_choices(write_grid):
    with pytest.raises(ConfigError, match="valid keys: .*transfer_layers"):
        load_grid(write_grid({"finetune": {"transfer_layer": 3}}))


def test_yaml_problems(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("study: a\nstudy: b\n")
    with pytest.raises(ConfigError, match="key given twice"):
        load_grid(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(bad)
    with pytest.raises(ConfigError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml")


def test_cli_bad_grid_exits_2_with_one_line_and_writes_nothing(write_grid, cli, tmp_path):
    path = write_grid({"experiments": [{"transfer_layers": 8}]})
    for command in (["plan", path], ["submit", path, "--backend", "local"]):
        out = cli(*command)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "experiments[0].transfer_layers" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_cli_plan_json_one_object_per_task_with_spec_names(write_grid, cli):
    out = cli("plan", write_grid(), "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1 + 3
    for key in ("task_id", "stage", "arch", "dataset", "depends_on", "transfer_layers", "high_lr_layers",
                "lr_high", "lr_low", "initial_decay_epochs", "frozen_layers", "examples_per_class", "split",
                "epochs", "batch_size", "momentum", "weight_decay", "seed"):
        assert all(key in r for r in rows), key
    table = cli("plan", write_grid(name="p.yaml"))
    assert "finetune" in table.stdout and rows[1]["task_id"] in table.stdout

