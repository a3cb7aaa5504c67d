"""GPU throughput of the worker's training step: torchvision AlexNet at 224 px in fp32,
bf16 and fp16 (channels_last), and the small-set path (uint8 images already on the GPU,
batched crop/flip, narrow AlexNet) on synthetic data. Needs only torch and torchvision.

And the streamed ImageNet path on a generated ImageNet-shaped tree
(benchmarks/make_imagenet_tree.py; --imagenet-classes 0 skips it): nvJPEG decoding
images/s (batched decode_jpeg on the GPU, alone and with the worker's resize + centre crop
to 256 px and its CPU fallback, files read by the loader's code), PIL on one CPU core for
comparison, and a real pre-training task (AlexNet, 224 px crops of 256 px images, bf16,
streamed with data_memory_gb 0): images/s of its first epoch (nvJPEG decoding into the
decode cache on node-local disk) and of later epochs (reading the cache).

    PYTHONPATH=. python -m benchmarks.gpu [--seconds 20] [--device cuda] [--imagenet-classes 100]
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


def imagenet_rows(device: torch.device, classes: int, per_class: int, epochs: int, workers: int) -> Iterator[tuple]:
    """nvJPEG decoding and a streamed pre-training on a generated ImageNet-shaped tree."""
    import json
    import os
    import tempfile
    from pathlib import Path

    import yaml

    from benchmarks.make_imagenet_tree import make_tree
    from hpcxfer.data import nvjpeg
    from hpcxfer.data.folders import decode
    from hpcxfer.fileio import iter_jsonl
    from hpcxfer.grid import expand, load_grid
    from hpcxfer.study import study_paths, write_study
    from hpcxfer.worker import decode_cache, train

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tree = make_tree(base / "tree", classes, per_class, 2, jobs=os.cpu_count() or 1)
        files = [str(p) for p in tree.train[:2048]]
        datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files]
        datas = [d for d in datas if nvjpeg.sniff(d.numpy().tobytes()) in nvjpeg.TO_GPU]  # not CMYK, PNG
        batch = 256

        def timed(fn, n_images: int, repeat: int = 3) -> float:
            fn()
            sync(device)
            began = time.perf_counter()
            for _ in range(repeat):
                fn()
            sync(device)
            return repeat * n_images / (time.perf_counter() - began)

        def decode_only() -> None:
            for i in range(0, len(datas), batch):
                nvjpeg.decode_jpegs(datas[i:i + batch], device)

        assemble = nvjpeg.Assemble(256, device)

        def decode_resize() -> None:
            for i in range(0, len(files), batch):
                assemble(nvjpeg.prepare(files[i:i + batch], 256))

        yield "nvJPEG decode, 500x375-ish JPEGs", "uint8", batch, timed(decode_only, len(datas))
        yield "nvJPEG + read + resize/crop to 256 (1 thread)", "uint8", batch, timed(decode_resize, len(files))
        few = files[:200]
        yield "PIL decode to 256 on one CPU core", "uint8", 1, timed(lambda: [decode(f, 256) for f in few], len(few), 1)
        print(f"  fallbacks: {assemble.summary()}", flush=True)

        os.environ["TMPDIR"] = str(base / "node")
        (base / "node").mkdir()
        os.environ.setdefault("HPCXFER_CACHE", str(base / "cache"))
        grid_file = base / "grid.yaml"
        grid_file.write_text(yaml.safe_dump({
            "study": "gpu-imagenet", "root": str(base / "runs"), "arch": "alexnet",
            "data": {**tree.data, "image_size": 256, "crop": 224, "verify": "none"},
            "pretrain": {"epochs": epochs, "batch_size": 256},
            "finetune": {"split": [0], "examples_per_class": [1], "epochs": 1},
            "experiments": [{"protocol": ["common"]}],
            "runtime": {"eval_every": 1, "tensorboard": False, "data_memory_gb": 0, "loader_workers": workers,
                        "amp": "bf16", "device": device.type, "checkpoint_minutes": 60}}))
        grid = load_grid(grid_file)
        tasks = expand(grid)
        paths = study_paths(grid)
        write_study(paths, grid, tasks)
        tp = paths.task(tasks[0].task_id)
        result = train.run(paths, tp)
        rates = [r["images_per_s"] for r in iter_jsonl(tp.metrics)]  # training only, one per epoch
        print(f"  pre-training: {json.dumps({k: result[k] for k in ('val_acc', 'wall_s', 'precision')})}; "
              f"images/s by epoch {[round(r) for r in rates]}; log: {tp.log}", flush=True)
        what = f"AlexNet pre-training, {classes // 2 * per_class} streamed"
        yield what, "bf16, epoch 1: nvJPEG + cache", 256, rates[0]
        if len(rates) > 1:
            yield what, "bf16, later: cache reads", 256, sorted(rates[1:])[len(rates[1:]) // 2]
        decode_cache.remove_owned()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=15, help="timed seconds per row")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--small-n", type=int, default=50_000, help="images of the synthetic small set")
    ap.add_argument("--imagenet-classes", type=int, default=100, help="classes of the generated tree (0: skip)")
    ap.add_argument("--imagenet-per-class", type=int, default=100, help="its training images per class")
    ap.add_argument("--imagenet-epochs", type=int, default=3)
    ap.add_argument("--loader-workers", type=int, default=8)
    ap.add_argument("--imagenet-only", action="store_true", help="skip the synthetic rows")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.seconds:g} s per row")
    print(f"| {'workload':<42} | {'precision':<22} | {'batch':>6} | {'images/s':>10} |")
    print(f"|{'-' * 44}|{'-' * 24}|{'-' * 8}|{'-' * 12}|", flush=True)
    groups = [] if args.imagenet_only else [alexnet_rows(device, args.batch, args.seconds, args.size),
                                            small_rows(device, args.seconds, args.small_n)]
    if args.imagenet_classes:
        groups.append(imagenet_rows(device, args.imagenet_classes, args.imagenet_per_class, args.imagenet_epochs,
                                    args.loader_workers))
    for rows in groups:
        for what, prec, batch, ips in rows:
            figure = f"{ips:,.0f}" if ips is not None else "n/a"
            print(f"| {what:<42} | {prec:<22} | {batch:>6} | {figure:>10} |", flush=True)


if __name__ == "__main__":
    main()
