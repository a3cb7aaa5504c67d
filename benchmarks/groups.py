"""Model-images per second of a protocol group's training step, looped against fused.

    PYTHONPATH=. python -m benchmarks.groups [--members 4 8] [--batch 8 64] [--seconds 5] [--threads 1]

Members are the narrow AlexNet on 28 x 28 one-channel images (Fashion-MNIST's shape), 5
classes, differing in h (the top h layers at lr_high), built and stepped by the worker's
own code (prepare_model, Looped, Fused); the batch is random and already on the device,
so the figures are of the step alone: forward, backward and SGD of every member.
model-images/s = members x batch x steps / seconds. A solo row (one model) is the
reference: looped costs about members x solo.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from hpcxfer.grid.task import Task
from hpcxfer.worker.fused import Fused
from hpcxfer.worker.precision import resolve
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.worker.learners import Data, Looped, pick_device, prepare_model


def members(count: int, data: Data) -> list:
    out = []
    for i in range(count):
        task = Task(stage="finetune", arch="alexnet-narrow", dataset="fashion-mnist", split=0, examples_per_class=10,
                    transfer_layers=0, high_lr_layers=1 + i % 8, lr_high=0.01, lr_low=0.001,
                    initial_decay_epochs=30, frozen_layers=0, lr_gamma=0.1, decay_every=30, epochs=1,
                    batch_size=8, momentum=0.9, weight_decay=5e-4, seed=0)
        out.append(prepare_model(task, RuntimeSettings(), None, data))  # n 0: nothing to transfer
    return out


def rate(trainer, batch: int, seconds: float, device: torch.device) -> tuple[float, int]:
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 5, (batch,), device=device)
    trainer.set_epoch(0)
    trainer.train()
    for _ in range(3):
        trainer.step(x, y)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.step(x, y)
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(trainer.learners) * batch * steps / (time.perf_counter() - start), steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device("auto")
    data = Data(precision=resolve("off", False, device), train=None, val=None, normalize=None, augment=None,
                view=None, num_classes=5, channels=1)
    print(json.dumps({"device": str(device), "threads": args.threads, "torch": torch.__version__,
                      "load_average": os.getloadavg()}))
    for batch in args.batch:
        solo, _ = rate(Looped(members(1, data), data.precision), batch, args.seconds, device)
        print(json.dumps({"batch": batch, "members": 1, "mode": "solo", "model_images_per_s": round(solo)}))
        for count in args.members:
            for mode, cls in (("looped", Looped), ("fused", Fused)):
                value, steps = rate(cls(members(count, data), data.precision), batch, args.seconds, device)
                print(json.dumps({"batch": batch, "members": count, "mode": mode, "steps": steps,
                                  "model_images_per_s": round(value), "vs_solo": round(value / solo, 2)}), flush=True)
    print(json.dumps({"load_average_after": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
