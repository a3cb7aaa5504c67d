"""The priced plan: a small grid priced by hand, streaming versus resident data, overrides,
and the same total from `plan` and `submit`."""

from __future__ import annotations

import pytest

from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.cost import TOTAL, TOTAL_ALONE, TOTAL_GROUPED, model_for, price, price_study, summary_line

SMALL = {
    "study": "priced", "arch": "alexnet", "data": {"dataset": "cifar10"},
    "pretrain": {"epochs": 2, "examples_per_class": 100},
    "finetune": {"split": [0], "examples_per_class": [10, "full"], "epochs": 4},
    "experiments": None,
    "runtime": {"eval_every": 3},
    "cost": {"devices": {"v100": {"train": 1000, "eval": 4000}}, "startup_s": 10},
}


def test_small_grid_priced_by_hand(write_grid):
    rows = dict(price_study(load_grid(write_grid(SMALL))))
    total = rows[TOTAL_GROUPED if TOTAL_GROUPED in rows else TOTAL]
    # CIFAR-10: 5 classes a half, 5,000 validation images of them. Evaluations: 2 epochs
    # -> 1 (after the last); 4 epochs every 3 -> 2. Arrays on disk: nothing to decode.
    pre = 10 + 2 * 500 / 1000 + 1 * 5000 / 4000          # 12.25 s
    x10 = 10 + 4 * 50 / 1000 + 2 * 5000 / 4000           # 12.7 s
    full = 10 + 4 * 25000 / 1000 + 2 * 5000 / 4000      # 112.5 s
    hours = (pre + x10 + full) / 3600
    assert total.tasks == 3
    assert total.gpu_hours["gpuvolta"] == pytest.approx(hours)
    assert total.su["gpuvolta"] == pytest.approx(hours * 12 * 3.0)  # 36 SU per V100-hour
    assert total.train_images == 2 * 500 + 4 * 50 + 4 * 25000
    assert total.eval_images == 5000 + 2 * 5000 + 2 * 5000
    assert rows["pretrain"].gpu_hours["gpuvolta"] == pytest.approx(pre / 3600)
    # dgxa100: the A100 row of the table (not overridden), 16 CPUs at 4.5 SU
    a100 = total.gpu_hours["dgxa100"]
    assert total.su["dgxa100"] == pytest.approx(a100 * 16 * 4.5)


@pytest.mark.parametrize("runtime", [{}, {"gpu_decode": False}, {"decode_cache": "off", "gpu_decode": False}])
def test_resident_sets_decode_once_and_large_sets_stream(write_grid, runtime):
    grid = load_grid(write_grid({**SMALL, "data": {"dataset": "imagenet", "image_size": 64, "crop": 56},
                                 "runtime": {**SMALL["runtime"], **runtime},
                                 "gadi": {"jobfs_gb": 20, "gpus_per_job": 2},  # 9.8 GB a task: 6.4 GB fit
                                 "cost": {"devices": {"v100": {"train": 1000, "eval": 4000, "decode_per_cpu": 10,
                                                               "nvjpeg": 3000, "cache_read_mb_s": 6.144}},
                                          "startup_s": 10, "memory_gb": 1, "train_images": 1_000_000}}))
    m = model_for(grid)
    tasks = {t.examples_per_class: t for t in expand(grid) if t.stage == "finetune"}
    from hpcxfer.grid.cost import task_seconds

    decode = 10 * 12  # images/s: 10 per CPU, 12 CPUs per V100
    # 10 per class: 5,000 + 25,000 images x 12,288 B fit in 1 GB: decoded once, by the CPUs
    assert task_seconds(tasks[10], m, "gpuvolta") == pytest.approx(
        10 + 30000 / decode + 4 * 5000 / 1000 + 2 * 25000 / 4000)
    # full: 500,000 images do not fit: streamed, 4 epochs and 2 evaluations
    full = task_seconds(tasks["full"], m, "gpuvolta")
    read = 6.144e6 / 12288  # the cache's disk: 500 images/s, slower than the GPU here
    if not runtime:  # nvJPEG then training on one GPU in the first pass; the cache after
        first_train, first_eval = 1 / (1 / 1000 + 1 / 3000), 1 / (1 / 4000 + 1 / 3000)
        assert full == pytest.approx(10 + 500000 / first_train + 3 * 500000 / read
                                     + 25000 / first_eval + 25000 / read)
    elif "decode_cache" not in runtime:  # the CPUs decode the first pass, the cache after
        assert full == pytest.approx(10 + 500000 / decode + 3 * 500000 / read + 25000 / decode + 25000 / read)
    else:  # every pass decodes, at the CPUs' pace
        assert full == pytest.approx(10 + 4 * 500000 / decode + 2 * 25000 / decode)
        # as when the cache does not fit the node-local disk a task gets (here 4.9 GB)
        small = load_grid(write_grid({**SMALL, "data": {"dataset": "imagenet", "image_size": 64, "crop": 56},
                                      "runtime": {**SMALL["runtime"], "gpu_decode": False},
                                      "gadi": {"jobfs_gb": 20, "gpus_per_job": 4},
                                      "cost": grid.cost.model_dump()}, name="small.yaml"))
        assert task_seconds(tasks["full"], model_for(small), "gpuvolta") == pytest.approx(full)


def test_plan_says_which_rates_are_measured_and_which_assumed(write_grid):
    from hpcxfer.grid.cost import assumptions

    lines = assumptions(load_grid(write_grid({**SMALL, "data": {"dataset": "imagenet"}, "cost": {}})))
    v100 = next(line for line in lines if line.startswith("v100"))
    assert "decode 310/s per CPU" in v100 and "nvJPEG 3,900/s" in v100 and "cache read 2,000 MB/s" in v100
    assert "decode: measured" in v100 and "nvJPEG: assumed" in v100 and "cache read: assumed" in v100
    startup = next(line for line in lines if line.startswith("start-up"))
    assert "decoded once" in startup and "197 KB an image" in startup
    assert "rates at the precision the worker trains in (v100 fp16, a100 bf16, h200 bf16)" in lines
    # ImageNet's half at 256 px: 640,584 + 25,000 images of 196,608 B
    assert "130.9 GB on node-local disk" in lines[-1] and "does not fit" in lines[-1]


def test_vgg11_is_slower_by_its_measured_factor(write_grid):
    alex = price(expand(load_grid(write_grid(SMALL))), model_for(load_grid(write_grid(SMALL))))
    grid = load_grid(write_grid({**SMALL, "arch": "vgg11"}, name="vgg.yaml"))
    vgg = price(expand(grid), model_for(grid))
    # the start-up does not scale; the rest does, by 1 / 0.161
    work_alex = alex.gpu_hours["gpuvolta"] * 3600 - 30
    work_vgg = vgg.gpu_hours["gpuvolta"] * 3600 - 30
    assert work_vgg == pytest.approx(work_alex / 0.161)


def test_plan_and_submit_print_the_same_total(write_grid, cli, tmp_path):
    path = write_grid()
    line = summary_line(price_study(load_grid(path))[-1][1])
    plan = cli("plan", path)
    assert plan.returncode == 0, plan.stderr
    assert line in " ".join(plan.stdout.split()) or line in plan.stdout.replace("\n", " ")
    sub = cli("submit", path, "--backend", "local", "--dry-run")
    assert sub.returncode == 0, sub.stderr
    assert line in sub.stdout.replace("\n", " ")


def test_bad_cost_override_is_one_line_exit_2(write_grid, cli, tmp_path):
    out = cli("plan", write_grid({"cost": {"devices": {"v100": {"train": -1}}}}))
    assert out.returncode == 2
    assert "cost.devices.v100.train" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_new_device_and_queue_from_the_grid(write_grid):
    grid = load_grid(write_grid({**SMALL, "cost": {
        "devices": {"mi250": {"train": 2000, "eval": 8000, "decode_per_cpu": 100}},
        "queues": {"amd": {"device": "mi250", "cpus_per_gpu": 8, "su_per_cpu_hour": 2.0}}, "startup_s": 0}}))
    total = price_study(grid)[-1][1]
    # memory_gb 0 for a new device: every pass streams, CIFAR arrays need no decoding
    seconds = 2 * 500 / 2000 + 5000 / 8000 + 4 * 50 / 2000 + 2 * 5000 / 8000 + 4 * 25000 / 2000 + 2 * 5000 / 8000
    assert total.gpu_hours["amd"] == pytest.approx(seconds / 3600)
    assert total.su["amd"] == pytest.approx(seconds / 3600 * 8 * 2.0)
    from hpcxfer.errors import ConfigError

    bad = load_grid(write_grid({**SMALL, "cost": {"devices": {"tpu": {"train": 5}}}}, name="bad.yaml"))
    with pytest.raises(ConfigError, match="cost.devices.tpu: a new device needs eval, decode_per_cpu"):
        price_study(bad)


def test_protocol_groups_pay_start_up_and_decoding_once(write_grid):
    """Two protocols per size form one group: start-up once, the arithmetic twice; a
    streamed group decodes each pass once for both members."""
    grid = load_grid(write_grid({**SMALL, "experiments": [{"transfer_layers": [3, 7], "high_lr_layers": 8}],
                                 "runtime": {"eval_every": 3, "group_max": 0}}))
    rows = dict(price_study(grid))
    pre = 10 + 2 * 500 / 1000 + 1 * 5000 / 4000                       # 12.25 s, alone
    x10 = 10 + 4 * 2 * 50 / 1000 + 2 * 2 * 5000 / 4000                 # one start-up, two members
    full = 10 + 4 * 2 * 25000 / 1000 + 2 * 2 * 5000 / 4000
    grouped, alone = rows[TOTAL_GROUPED if TOTAL_GROUPED in rows else TOTAL], rows[TOTAL_ALONE]
    assert grouped.tasks == alone.tasks == 5
    assert set(grouped.workers.values()) == {3} and set(alone.workers.values()) == {5}
    assert grouped.gpu_hours["gpuvolta"] == pytest.approx((pre + x10 + full) / 3600)
    assert alone.gpu_hours["gpuvolta"] - grouped.gpu_hours["gpuvolta"] == pytest.approx(2 * 10 / 3600)
    assert grouped.images == alone.images  # the same work, fewer workers
    assert "in 3 workers" in summary_line(grouped)

    from hpcxfer.grid.cost import task_seconds

    streamed = load_grid(write_grid({**SMALL, "data": {"dataset": "imagenet", "image_size": 64, "crop": 56},
                                     "runtime": {"eval_every": 3, "decode_cache": "off", "gpu_decode": False},
                                     "cost": {"devices": {"v100": {"train": 1000, "eval": 4000, "decode_per_cpu": 10}},
                                              "startup_s": 10, "memory_gb": 1, "train_images": 1_000_000}},
                                    name="streamed.yaml"))
    m = model_for(streamed)
    full_task = next(t for t in expand(streamed) if t.examples_per_class == "full")
    decode = 10 * 12
    assert task_seconds(full_task, m, "gpuvolta", members=2) == pytest.approx(
        10 + 4 * max(2 * 500000 / 1000, 500000 / decode) + 2 * max(2 * 25000 / 4000, 25000 / decode))
    # decode-bound: the second member costs nothing more than the first
    assert task_seconds(full_task, m, "gpuvolta", members=2) == pytest.approx(task_seconds(full_task, m, "gpuvolta"))
