"""Size, save time and load time of a worker checkpoint of torchvision's full AlexNet
(61.1 M parameters, 1000 classes) with its SGD momentum buffers, as the worker writes it
(atomic write, fsync, SHA-256 of the contents).

    PYTHONPATH=. python -m benchmarks.checkpoint_size [--dir FOLDER] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.models import alexnet

from hpcxfer.layout import TaskPaths
from hpcxfer.worker import checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    model = alexnet(weights=None)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    opt.step()  # momentum buffers exist, as in any checkpoint after the first step
    gen = torch.Generator().manual_seed(0)
    state = {"task": {"arch": "alexnet"}, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
             "rng": checkpoint.rng_state(gen), "epoch": 3, "step": 100, "order": torch.randperm(640_000),
             "loss_sum": torch.zeros((), dtype=torch.float64), "correct": torch.zeros((), dtype=torch.long),
             "train_s": 0.0, "restarts": 0, "wall_s": 0.0, "last": {}}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = TaskPaths(Path(tmp))
        saves, loads, hashes = [], [], []
        for _ in range(args.repeat):
            saves.append(checkpoint.save(paths, state))
            began = time.perf_counter()
            checkpoint.load_latest(paths, state["task"])
            loads.append(time.perf_counter() - began)
            began = time.perf_counter()
            checkpoint.digest(state)
            hashes.append(time.perf_counter() - began)
        size = paths.checkpoint.stat().st_size
    print(f"AlexNet {params / 1e6:.1f} M parameters; checkpoint {size / 2**20:.0f} MiB "
          f"(model + momentum + a 640k-image data order)")
    print(f"save {statistics.median(saves):.2f} s (of which SHA-256 {statistics.median(hashes):.2f} s), "
          f"load + verify {statistics.median(loads):.2f} s; median of {args.repeat}")


if __name__ == "__main__":
    main()
