"""A search against the full grid on Fashion-MNIST: 12 protocols (the paper's experiments
3.1, 3.5 and 3.6) x 4 splits x 2 sizes, with the quick start's settings. Runs `hpcxfer
tune` and `hpcxfer submit` of the same grid into two roots and checks, per size: the
search's winner is the grid's best protocol or tied with it (the paired 95 % interval of
their difference includes 0); the search used at most 25 % of the grid's fine-tuning
images; every finalist's metrics equal the same task's in the full grid. Prints JSON.

    PYTHONPATH=. python -m benchmarks.tune_fmnist [--root DIR] [--splits 4] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hpcxfer.collect.paired import paired_stats

EXPERIMENTS = [
    {"name": "3.1 layers transferred", "transfer_layers": [1, 2, 3, 4, 5, 6], "high_lr_layers": 8,
     "initial_decay_epochs": 30, "frozen_layers": 0},
    {"name": "3.5 frozen layers", "transfer_layers": 6, "high_lr_layers": 1, "initial_decay_epochs": 20,
     "frozen_layers": [0, 2, 4]},
    {"name": "3.6 optimal vs common vs scratch", "protocol": ["optimal", "common", "scratch"]},
]
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "epoch")


def grid(splits: int, epochs: int) -> dict:
    g = yaml.safe_load(Path("jobs/quickstart.yaml").read_text())
    g["finetune"].update({"split": list(range(splits)), "seed": [0], "examples_per_class": [10, 25],
                          "epochs": epochs})
    g["experiments"] = EXPERIMENTS
    g["runtime"]["eval_every"] = 5
    g.pop("search", None)  # the defaults (docs/design.md §12)
    return g


def hpcxfer(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpcxfer", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - began, out.stdout


def results(study: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in study.glob("tasks/ft-*/result.json")}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", help="where the two studies go (default: a temporary folder)")
    p.add_argument("--splits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="tune-bench-"))
    g = grid(args.splits, args.epochs)
    (root / "grid.yaml").write_text(yaml.safe_dump(g, sort_keys=False))
    tune_s, _ = hpcxfer("tune", str(root / "grid.yaml"), "--backend", "local", "--wait", "--root", str(root / "search"))
    full_s, _ = hpcxfer("submit", str(root / "grid.yaml"), "--backend", "local", "--wait", "--root", str(root / "full"))
    search, full = root / "search" / g["study"], root / "full" / g["study"]
    _, view = hpcxfer("collect", str(search), "--view", "tune", "--format", "json")
    rows = json.loads(view)["views"]["tune"]["rows"]
    grid_results, searched = results(full), results(search)
    decision = json.loads((search / "tune" / "rung-0.json").read_text())
    out = {"tune_s": round(tune_s), "full_grid_s": round(full_s), "sizes": []}
    for row in rows:
        size = str(row["examples_per_class"])
        members = {s["candidate"]: s["tasks"] for s in decision["sizes"][size]}
        acc = {c: [grid_results[t]["val_acc"] for t in ts] for c, ts in members.items()}
        best = max(acc, key=lambda c: sum(acc[c]))
        stats = paired_stats([a - b for a, b in zip(acc[row["winner"]], acc[best])])
        finalists = [t for ts in members.values() for t in ts if t in searched]
        same = bool(finalists) and all({k: searched[t].get(k) for k in METRICS} ==
                                       {k: grid_results[t].get(k) for k in METRICS} for t in finalists)
        out["sizes"].append({"examples_per_class": row["examples_per_class"], "candidates": len(members),
                             "winner_is_best": row["winner"] == best,
                             "tied_with_best": stats["ci_low"] is not None and stats["ci_low"] <= 0 <= stats["ci_high"],
                             "winner_minus_best": stats["mean_diff"], "images_share": row["images_share"],
                             "finalists_identical": same})
    print(json.dumps(out, indent=2))
    ok = all((s["winner_is_best"] or s["tied_with_best"]) and s["images_share"] <= 0.25 and s["finalists_identical"]
             for s in out["sizes"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
