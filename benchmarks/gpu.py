"""GPU throughput of the worker's training step: torchvision AlexNet at 224 px in fp32,
bf16 and fp16 (channels_last), and the small-set path (uint8 images already on the GPU,
batched crop/flip, narrow AlexNet) on synthetic data. Needs only torch and torchvision.

    PYTHONPATH=. python -m benchmarks.gpu [--seconds 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch
from torch import nn

from hpcxfer.worker.augment import Normalize, random_crop_flip
from hpcxfer.worker.models import build_model
from hpcxfer.worker.precision import Precision, bf16_supported


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step, batch: int, seconds: float, device: torch.device, warmup: int = 10) -> float:
    """Images/s of `step()` over about `seconds`, after `warmup` steps."""
    for _ in range(warmup):
        step()
    sync(device)
    n, began = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        n += 10
        sync(device)
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            return n * batch / elapsed


def train_step(model: nn.Module, prec: Precision, batch_fn):
    """One worker step (autocast, gradient scaler when fp16) on the batch `batch_fn()` gives."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = prec.scaler()

    def step() -> None:
        x, y = batch_fn()
        with prec.autocast():
            loss = nn.functional.cross_entropy(model(prec.images(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def alexnet_rows(device: torch.device, batch: int, seconds: float, size: int) -> Iterator[tuple]:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype == torch.bfloat16 and device.type == "cuda" and not bf16_supported(device):
            yield f"AlexNet {size} px", name, batch, None
            continue
        for cl in (False, True) if name == "fp32" else (True,):
            torch.manual_seed(0)
            model = build_model("alexnet", 1000, 3).to(device)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            prec = Precision(device=device, dtype=dtype, channels_last=cl)
            label = name + (" channels_last" if cl else "")
            yield (f"AlexNet {size} px", label, batch,
                   throughput(train_step(model, prec, lambda: (x, y)), batch, seconds, device))
            del model


def small_rows(device: torch.device, seconds: float, n: int = 50_000) -> Iterator[tuple]:
    """The in-memory path of a small task: index, crop/flip, normalise and step, all on the GPU."""
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 5, (n,), device=device)
    norm = Normalize((0.286,), (0.353,), device)
    gen = torch.Generator().manual_seed(0)
    for batch in (8, 128, 1024):
        model = build_model("alexnet-narrow", 5, 1).to(device)
        prec = Precision(device=device, dtype=None, channels_last=False)

        def batch_fn(batch: int = batch) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, n, (batch,), generator=gen).to(device, non_blocking=True)
            return norm(random_crop_flip(images[idx], 2, gen)), labels[idx]

        step = train_step(model, prec, batch_fn)
        yield "narrow AlexNet 28 px, uint8 set on device", "fp32 batched aug", batch, throughput(
            step, batch, seconds, device)
    model = build_model("alexnet-narrow", 5, 1).to(device)
    with torch.no_grad():
        model.eval()

        def eval_step() -> None:
            for i in range(0, n, 1024):
                model(norm(images[i:i + 1024])).argmax(1)

        yield "narrow AlexNet 28 px, evaluation", "fp32", n, throughput(eval_step, n, seconds, device, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=15, help="timed seconds per row")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--small-n", type=int, default=50_000, help="images of the synthetic small set")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.seconds:g} s per row")
    print(f"| {'workload':<42} | {'precision':<22} | {'batch':>6} | {'images/s':>10} |")
    print(f"|{'-' * 44}|{'-' * 24}|{'-' * 8}|{'-' * 12}|", flush=True)
    for rows in (alexnet_rows(device, args.batch, args.seconds, args.size), small_rows(device, args.seconds, args.small_n)):
        for what, prec, batch, ips in rows:
            figure = f"{ips:,.0f}" if ips is not None else "n/a"
            print(f"| {what:<42} | {prec:<22} | {batch:>6} | {figure:>10} |", flush=True)


if __name__ == "__main__":
    main()
