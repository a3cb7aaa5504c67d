"""End-to-end images/s of hpcxfer's worker against a plain PyTorch loop (plain_loop.py).

Each run is a whole process, timed from outside: start-up, data, training and evaluation.
Tasks are those of jobs/quickstart.yaml: a fine-tuning task (from scratch, so that no
pre-training is needed first) and one epoch of pre-training on the full source half.

    PYTHONPATH=. python -m benchmarks.end_to_end [--size 25] [--epochs 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study


def make_study(root: Path, name: str, size: int, epochs: int, runtime: dict) -> tuple[Path, list[str]]:
    grid = {
        "study": name, "root": str(root), "data": {"dataset": "fashion-mnist"},
        "pretrain": {"epochs": 1, "batch_size": 128, "lr": 0.01, "decay_every": 4},
        "finetune": {"split": [0], "examples_per_class": [size], "epochs": epochs, "batch_size": 8,
                     "decay_every": 30, "protocol": "scratch"},
        "runtime": {"tensorboard": False, **runtime},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    g = load_grid(path)
    tasks = expand(g)
    paths = study_paths(g)
    write_study(paths, g, tasks)
    return paths.dir, [t.task_id for t in tasks]  # [pretrain, finetune]


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - began, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=25, help="fine-tuning images per class")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-pretrain", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "HPCXFER_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    py = [sys.executable, "-m"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        which = [("finetune", 1)] + ([] if args.skip_pretrain else [("pretrain", 0)])
        for stage, k in which:
            for label, runtime in (("hpcxfer, eval every epoch", {"eval_every": 1}),
                                   ("hpcxfer, eval every 20 (quickstart)", {"eval_every": 20})):
                if stage == "pretrain" and runtime["eval_every"] != 1:
                    continue
                study, ids = make_study(root, f"{stage}{len(rows)}", args.size, args.epochs, runtime)
                wall, _ = timed(py + ["hpcxfer", "run-task", str(study), ids[k]], env)
                result = read_json(study / "tasks" / ids[k] / "result.json")
                n = _train_images(study / "tasks" / ids[k])
                rows.append((stage, label, n, wall, result["startup_s"], result["val_acc"]))
            study, ids = make_study(root, f"{stage}plain", args.size, args.epochs, {})
            wall, out = timed(py + ["benchmarks.plain_loop", str(study / "tasks" / ids[k])], env)
            plain = json.loads(out.strip().splitlines()[-1])
            rows.append((stage, "plain PyTorch loop (DataLoader, per-sample transforms)",
                         plain["train_images"], wall, plain["first_step_s"], plain["val_acc"]))
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print("| task | loop | train images | wall s | images/s end to end | first step s | val acc |")
    print("|---|---|---|---|---|---|---|")
    for stage, label, n, wall, first, acc in rows:
        print(f"| {stage} | {label} | {n} | {wall:.1f} | {n / wall:.0f} | {first:.2f} | {acc:.3f} |")


def _train_images(task_dir: Path) -> int:
    from hpcxfer.data import class_split, first_per_class, open_dataset
    from hpcxfer.grid.task import Task

    config = read_json(task_dir / "task.json")
    task = Task.from_dict(config)
    ds = open_dataset(task.dataset)
    source, target = class_split(ds.num_classes, task.split)
    classes = source if task.stage == "pretrain" else target
    return len(first_per_class(ds.train.labels, classes, task.examples_per_class)) * task.epochs


if __name__ == "__main__":
    main()
