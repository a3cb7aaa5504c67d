"""Training images/s per epoch on the streamed path of a generated ImageNet-shaped tree,
with and without the decode cache: the first epoch decodes (and, with the cache, writes
the decoded images to node-local disk), later epochs read the cache through a memory map.

    PYTHONPATH=. python -m benchmarks.imagenet_epochs [--classes 100] [--per-class 40]
        [--epochs 4] [--batch 256] [--image-size 32] [--crop 32] [--arch alexnet-narrow] [--workers 2]
        [--threads 0] [--only auto|off] [--tree DIR]

A decode-bound configuration on a CPU: the narrow AlexNet at 32 px learns from images
decoded from ~85 KB JPEGs of about 500x375. Each setting trains one pre-training task on the
source half, streamed (data_memory_gb 0), with `hpcxfer.worker.train.run` in this process;
per epoch it reports training images/s of wall time (the metrics record's `images_per_s`)
and images per CPU-second of this process and its loader workers (getrusage of self and
children: the loader workers of an epoch are reaped at its end). On a machine shared with
other work the wall figures move with the neighbours' load; the CPU figures hold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.make_imagenet_tree import make_tree
from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study


def run(base: Path, data: dict, args, cache: str) -> dict:
    from hpcxfer.worker import decode_cache, train

    name = f"epochs-{cache}"
    grid_file = base / f"{name}.yaml"
    grid_file.write_text(yaml.safe_dump({
        "study": name, "root": str(base / "runs"), "arch": args.arch,
        "data": {**data, "image_size": args.image_size, "crop": args.crop, "verify": "none"},
        "pretrain": {"epochs": args.epochs, "batch_size": args.batch, "examples_per_class": "full"},
        "finetune": {"split": [0], "examples_per_class": [1], "epochs": 1},
        "experiments": [{"protocol": ["common"]}],
        "runtime": {"eval_every": 1, "tensorboard": False, "data_memory_gb": 0, "loader_workers": args.workers,
                    "decode_cache": cache, "checkpoint_minutes": 60}}))
    grid = load_grid(grid_file)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    tp = paths.task(tasks[0].task_id)
    os.environ["TMPDIR"] = str(base / "node")
    cpu: list[float] = []
    real_epoch = train.train_one_epoch

    def timed_epoch(p, gen, pos, after_step=lambda pos: None):
        before = cpu_seconds()
        out = real_epoch(p, gen, pos, after_step)
        cpu.append(cpu_seconds() - before)
        return out

    train.train_one_epoch = timed_epoch
    began = time.perf_counter()
    try:
        result = train.run(paths, tp)
    finally:
        train.train_one_epoch = real_epoch
        decode_cache.remove_owned()
    wall = time.perf_counter() - began
    records = list(iter_jsonl(tp.metrics))
    n = len(first_set(tp))
    return {"cache": cache, "images": n, "epochs_images_per_s": [round(r["images_per_s"], 1) for r in records],
            "epochs_images_per_cpu_s": [round(n / c, 1) for c in cpu], "wall_s": round(wall, 1),
            "val_loss": result["val_loss"], "train_loss": result["train_loss"]}


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the loader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def first_set(tp) -> list:
    """The task's training images (for the count)."""
    from hpcxfer.data import class_split, first_per_class, open_dataset
    from hpcxfer.grid.task import Task

    config = read_json(tp.config)
    task = Task.from_dict(config)
    ds = open_dataset(task.dataset, config["data"].get("path"), config["data"])
    source, _ = class_split(ds.num_classes, task.split)
    return list(first_per_class(ds.train.labels, source, task.examples_per_class))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--arch", default="alexnet-narrow")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0: torch's)")
    ap.add_argument("--tree", help="an existing tree made by make_imagenet_tree (else one is made)")
    ap.add_argument("--only", choices=["auto", "off"], help="one setting only")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "node").mkdir()
        os.environ.setdefault("HPCXFER_CACHE", str(base / "cache"))
        if args.tree:
            data = {"dataset": "imagenet", "path": args.tree, "val_labels": "ILSVRC2012_validation_ground_truth.txt",
                    "class_ids": "ILSVRC2012_class_ids.txt"}
        else:
            began = time.perf_counter()
            data = make_tree(base / "tree", args.classes, args.per_class, 2).data
            print(f"tree: {args.classes} classes x {args.per_class} in {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
        rows = []
        for cache in [args.only] if args.only else ["off", "auto"]:
            row = run(base, data, args, cache)
            for unit in ("images_per_s", "images_per_cpu_s"):
                rates = row[f"epochs_{unit}"]
                if len(rates) > 1:
                    row[f"later_over_first_{unit}"] = round(statistics.median(rates[1:]) / rates[0], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if len(rows) == 2:
            same = all(rows[0][k] == rows[1][k] for k in ("val_loss", "train_loss"))
            print(json.dumps({"identical_results": same}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
