"""Protocol groups at submit time: which tasks share one worker, and what a group's id is."""

from __future__ import annotations

import dataclasses

from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.groups import GROUP_FREE, Group, group_key, is_group_id, make_groups, units


def _grid(write_grid, **over):
    return expand(load_grid(write_grid({"finetune": {"split": [0, 1], "examples_per_class": [10, 25]},
                                        "experiments": [{"name": "n", "transfer_layers": [0, 3, 5, 7],
                                                         "frozen_layers": 0, "high_lr_layers": [1, 8]}],
                                        **over})))


def test_a_group_is_one_cell_and_differs_only_in_protocol(write_grid):
    tasks = _grid(write_grid)
    units = make_groups(tasks, 0)
    groups = [u for u in units if isinstance(u, Group)]
    # 2 pre-trainings alone, then one group per (split, size) of the 8 protocols
    assert [u.task_id for u in units[:2]] == [t.task_id for t in tasks[:2]]
    assert len(groups) == 4 and all(len(g.members) == 8 for g in groups)
    by_id = {t.task_id: t for t in tasks}
    for g in groups:
        members = [by_id[m] for m in g.members]
        assert len({(t.split, t.examples_per_class) for t in members}) == 1
        assert len({group_key(t) for t in members}) == 1
        assert is_group_id(g.group_id) and not is_group_id(members[0].task_id)
    # every fine-tuning task is in exactly one group
    assert sorted(m for g in groups for m in g.members) == sorted(t.task_id for t in tasks if t.stage == "finetune")


def test_group_max_splits_and_one_means_alone(write_grid):
    tasks = _grid(write_grid)
    assert make_groups(tasks, 1) == tasks
    units = make_groups(tasks, 3)
    sizes = sorted(len(u.members) for u in units if isinstance(u, Group))
    assert sizes == [2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]  # 8 = 3 + 3 + 2 per cell


def test_any_shared_setting_that_differs_splits_a_group(write_grid):
    task = [t for t in _grid(write_grid) if t.stage == "finetune"][0]
    for name in ("epochs", "batch_size", "momentum", "weight_decay", "seed", "lr_gamma", "decay_every", "arch"):
        other = dataclasses.replace(task, **{name: "x" if name == "arch" else getattr(task, name) + 1}).with_id()
        assert group_key(other) != group_key(task), name
    for name in GROUP_FREE:
        other = dataclasses.replace(task, **{name: getattr(task, name) + 1}).with_id()
        assert group_key(other) == group_key(task), name


def test_a_group_id_names_its_members_exactly(write_grid):
    tasks = [t for t in _grid(write_grid) if t.stage == "finetune"]
    first = make_groups(tasks, 0)
    again = make_groups(list(reversed(tasks)), 0)
    assert {g.group_id for g in first} == {g.group_id for g in again}  # order does not matter
    fewer = make_groups(tasks[1:], 0)  # one member done: what is left is another group
    assert {g.group_id for g in fewer} != {g.group_id for g in first}


def test_automatic_groups_fit_the_gpu_each_backend_names(write_grid):
    """group_max 0 sizes groups to the GPU's memory: the Gadi queue's GPU, the grid's
    `resources.gpu_memory_gb`, 32 GB where GPUs are asked for without saying which, and no
    limit but AUTO_MAX on CPUs."""
    from hpcxfer.backends import BACKENDS
    from hpcxfer.grid.groups import AUTO_MAX, auto_max

    assert [auto_max("alexnet", gb) for gb in (32, 80, 141)] == [11, 28, 49]
    assert auto_max("alexnet", None) == auto_max("alexnet-narrow", 32) == AUTO_MAX
    assert auto_max("vgg11", 32) == 5 and auto_max("alexnet", 1) == 1

    def memory(backend, **over):
        grid = load_grid(write_grid({"arch": "alexnet", "data": {"dataset": "imagenet"}, **over},
                                    name=f"{backend}.yaml"))
        return BACKENDS[backend]().device_memory_gb(grid)

    assert memory("gadi", gadi={"queue": "gpuhopper"}) == 141 and memory("gadi") == 32  # gpuvolta: a V100
    assert memory("slurm", resources={"gpus": 1}) == memory("pbs", resources={"gpus": 2}) == 32
    assert memory("slurm", resources={"gpus": 1, "gpu_memory_gb": 80}) == 80
    assert memory("slurm") == 32  # one GPU unless told otherwise
    assert memory("slurm", resources={"gpus": 0}) is None and memory("pbs", runtime={"device": "cpu"}) is None
    assert memory("local") is None
    assert memory("local", resources={"gpu_memory_gb": 24}) == 24
    tasks = _grid(write_grid, arch="alexnet")
    assert [len(u.members) for u in units(tasks, 0, device_gb=32)[0]] == [1, 1, 8, 8, 8, 8]  # 8 of 11
    assert [len(u.members) for u in units(tasks, 0, device_gb=4)[0]] == [1] * len(tasks)  # not even two fit


def test_a_dry_run_on_gadi_sizes_groups_to_the_queue_gpu(write_grid, cli, tmp_path):
    """14 AlexNet protocols of one cell: 11 fit a V100 (gpuvolta), all 14 an H200."""
    over = {"arch": "alexnet", "data": {"dataset": "imagenet", "path": str(tmp_path / "none")},
            "experiments": None, "gadi": {"project": "ab12"},
            "finetune": {"split": [0], "examples_per_class": [10], "epochs": 2, "transfer_layers": [1, 2, 3, 4, 5, 6, 7],
                         "high_lr_layers": [1, 8]}}
    for queue, workers in (("gpuvolta", "3 workers, 2 of them"), ("gpuhopper", "2 workers, 1 of them")):
        grid = write_grid({**over, "runtime": {"group_max": 0}, "gadi": {"project": "ab12", "queue": queue}},
                          name=f"{queue}.yaml")
        out = cli("submit", grid, "--backend", "gadi", "--dry-run", env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert f"submitting 15 to gadi ({workers} protocol groups)" in " ".join(out.stdout.split())
