"""The shipped Plested 2019 job files, the `extends:` mechanism and Yosinski's split at
ImageNet's 1000 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from hpcxfer.data import class_split
from hpcxfer.errors import ConfigError
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.expansion import expand_by_block
from hpcxfer.grid.protocols import SIZES, TABLE2

JOBS = Path(__file__).resolve().parents[1] / "jobs" / "plested2019"
#: docs/design.md §1: fine-tuning tasks of each experiment.
COUNTS = {"exp3.1": 196, "exp3.2": 224, "exp3.3": 392, "exp3.4": 280, "exp3.5": 196, "exp3.6": 84}


@pytest.mark.parametrize("name, count", sorted(COUNTS.items()))
def test_each_experiment_plans_specs_count_plus_four_pretraining(name, count):
    tasks = expand(load_grid(JOBS / f"{name}.yaml"))
    assert sum(t.stage == "finetune" for t in tasks) == count
    pre = [t for t in tasks if t.stage == "pretrain"]
    assert [t.split for t in pre] == [0, 1, 2, 3]
    assert {t.examples_per_class for t in tasks if t.stage == "finetune"} == set(SIZES)


def test_cli_plan_prints_the_counts(cli):
    for name, count in COUNTS.items():
        out = cli("plan", JOBS / f"{name}.yaml", "--limit", "0")
        assert out.returncode == 0, out.stderr
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
                for line in out.stdout.splitlines() if line.count("│") >= 3}
        assert rows["finetune"] == str(count) and rows["pretrain"] == "4", (name, rows)


def test_six_experiments_are_one_study_and_shared_protocols_run_once():
    grids = {n: load_grid(JOBS / f"{n}.yaml") for n in COUNTS}
    assert {g.study for g in grids.values()} == {"plested2019"}
    ids = {n: {t.task_id for t in expand(g)} for n, g in grids.items()}
    pretrain = set.intersection(*ids.values())
    assert len(pretrain) == 4  # the same four source models serve every experiment
    everything = load_grid(JOBS / "all.yaml")
    by_block = dict(expand_by_block(everything))
    assert {n: len(ts) for n, ts in by_block.items()} == {
        [b for b in by_block if b.startswith(n[3:])][0]: c for n, c in COUNTS.items()}
    union = set().union(*ids.values())
    assert {t.task_id for t in expand(everything)} == union
    # n = 6, h = 8, d = 30, f = 0 is in 3.1 and 3.2: one task, not two
    shared = ids["exp3.1"] & ids["exp3.2"] - pretrain
    assert len(shared) == 28 and all("-n6h8d30f0-" in t for t in shared)
    assert len(union) == 4 + 1176


def test_optimal_in_3_6_is_table2_per_size():
    tasks = [t for t in expand(load_grid(JOBS / "exp3.6.yaml")) if t.stage == "finetune"]
    for size in SIZES:
        row = TABLE2[size]
        got = {(t.transfer_layers, t.high_lr_layers, t.initial_decay_epochs, t.frozen_layers)
               for t in tasks if t.examples_per_class == size}
        # optimal, common (7, 8, 30, 0), scratch (0, 8, 30, 0)
        assert got == {(row["transfer_layers"], 1, row["initial_decay_epochs"], row["frozen_layers"]),
                       (7, 8, 30, 0), (0, 8, 30, 0)}, size
    assert {(t.transfer_layers, t.initial_decay_epochs, t.frozen_layers) for t in tasks
            if t.examples_per_class == 10 and t.high_lr_layers == 1} == {(6, 10, 6)}


def test_3_5_takes_table2_decay_per_size():
    tasks = [t for t in expand(load_grid(JOBS / "exp3.5.yaml")) if t.stage == "finetune"]
    for t in tasks:
        assert t.initial_decay_epochs == TABLE2[t.examples_per_class]["initial_decay_epochs"]
    assert {t.frozen_layers for t in tasks} == set(range(7))


def test_split_recipe_at_1000_classes_seed_0():
    source, target = class_split(1000, 0)
    # numpy's legacy choice(replace=False) is permutation(n)[:k]; computed that way here
    perm = np.random.RandomState(0).permutation(1000)
    assert perm[:5].tolist() == [993, 859, 298, 553, 672]  # MT19937 seed 0, stable by numpy's policy
    assert source == sorted(perm[:500].tolist())
    for c in (993, 859, 298, 553, 672, 1, 2, 999):
        assert c in source
    for c in (0, 3, 4, 7, 9, 11, 13, 16):
        assert c in target
    assert source[:8] == [1, 2, 5, 6, 8, 10, 12, 14] and target[:8] == [0, 3, 4, 7, 9, 11, 13, 16]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_extends_merges_and_concatenates_experiments(tmp_path):
    _write(tmp_path / "base.yaml", {"study": "s", "data": {"dataset": "fashion-mnist"},
                                    "finetune": {"split": [0], "examples_per_class": [10], "epochs": 2},
                                    "experiments": [{"name": "a", "protocol": "common"}]})
    _write(tmp_path / "b.yaml", {"extends": "base.yaml", "finetune": {"epochs": 3},
                                 "experiments": [{"name": "b", "protocol": "scratch"}]})
    _write(tmp_path / "c.yaml", {"extends": "base.yaml", "experiments": [{"name": "c", "transfer_layers": 3}]})
    both = load_grid(_write(tmp_path / "both.yaml", {"extends": ["b.yaml", "c.yaml"]}))
    assert [name for name, _ in expand_by_block(both)] == ["a", "b", "c"]  # base read once
    assert both.finetune.epochs == [3] and both.finetune.examples_per_class == [10]


def test_extends_errors_name_the_file(tmp_path):
    _write(tmp_path / "base.yaml", {"study": "s", "data": {"dataset": "fashion-mnist"},
                                    "finetune": {"epochs": 2, "batch_sise": 3}})
    child = _write(tmp_path / "child.yaml", {"extends": "base.yaml"})
    with pytest.raises(ConfigError) as err:
        load_grid(child)
    assert err.value.path.endswith("base.yaml") and "batch_sise" in str(err.value)
    with pytest.raises(ConfigError, match="no such grid file"):
        load_grid(_write(tmp_path / "x.yaml", {"extends": "nope.yaml"}))
    _write(tmp_path / "p.yaml", {"extends": "q.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_grid(_write(tmp_path / "q.yaml", {"extends": "p.yaml"}))
    with pytest.raises(ConfigError, match="extends"):
        load_grid(_write(tmp_path / "y.yaml", {"extends": {"a": 1}}))


def test_the_paper_study_is_priced_grouped_within_150_h200_hours():
    """Protocol groups pay start-up and decoding once per cell: the paper's study fits in
    150 GPU-hours on gpuhopper grouped, from the measured H200 rates; every task alone costs
    several times that."""
    from hpcxfer.grid.cost import TOTAL, TOTAL_ALONE, TOTAL_GROUPED, price_study

    rows = dict(price_study(load_grid(JOBS / "all.yaml")))
    grouped, alone = rows[TOTAL_GROUPED if TOTAL_GROUPED in rows else TOTAL], rows[TOTAL_ALONE]
    # automatic groups fit the GPU: a cell's 42 protocols in one group on an H200 (141 GB),
    # two on an A100 (80 GB: 28 AlexNets at most), four on a V100 (32 GB: 11)
    assert grouped.tasks == alone.tasks == 1180
    assert grouped.workers == {"gpuhopper": 4 + 28, "dgxa100": 4 + 28 * 2, "gpuvolta": 4 + 28 * 4}
    assert grouped.gpu_hours["gpuhopper"] <= 150
    assert alone.gpu_hours["gpuhopper"] > 2 * grouped.gpu_hours["gpuhopper"]
