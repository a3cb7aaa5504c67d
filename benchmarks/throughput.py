"""Images per second of the worker's pipeline on this machine, for the cost table
(hpcxfer/grid/cost.py DEVICES): training (uint8 images resident on the device, batched
random resized crop + flip, normalise, forward, backward, SGD step), evaluation (centre
crop, forward) and PIL decoding of JPEG files to the stored 256 x 256 (per core and on
all cores).

    python benchmarks/throughput.py [--out FILE] [--steps N] [--quick]

Synthetic JPEGs (500 x 375, ImageNet's typical size, smooth content plus noise) stand in
for ImageNet's; the GPU figures do not depend on image content.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcxfer.data.folders import decode, for_each, threads  # noqa: E402
from hpcxfer.worker.augment import Normalize, centre_crop, random_resized_crop_flip  # noqa: E402
from hpcxfer.worker.models import build_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(arch: str, device: torch.device, batch: int, steps: int, dtype: torch.dtype | None) -> float:
    torch.manual_seed(0)
    model = build_model(arch, 500, 3).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randint(0, 256, (batch * 4, 3, 256, 256), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 500, (batch * 4,), device=device)
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device)
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        idx = torch.randint(0, len(images), (batch,), generator=gen).to(device)
        x = norm(random_resized_crop_flip(images[idx], 224, gen)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(arch: str, device: torch.device, batch: int, steps: int, dtype: torch.dtype | None) -> float:
    model = build_model(arch, 500, 3).to(device).eval().to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(norm(centre_crop(images, 224)).contiguous(memory_format=torch.channels_last))

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def make_jpegs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(n):
        base = (np.stack([xx * (i % 7 + 1), yy * (i % 5 + 1), xx + yy], -1) % 256).astype(np.int16)
        img = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"img_{i:05d}.JPEG"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def decode_rates(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), n)
        start = time.perf_counter()
        for p in paths[: n // 4]:
            decode(p, 256)
        one = (n // 4) / (time.perf_counter() - start)
        start = time.perf_counter()
        for_each(lambda p: decode(p, 256), paths)
        many = n / (time.perf_counter() - start)
    return {"decode_per_core": one, "decode_all_cores": many, "cores": threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    batch, steps = (8, 2) if args.quick else (256, args.steps)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": batch}
    result.update(decode_rates(16 if args.quick else 400))
    print(json.dumps(result), flush=True)
    for arch in ("alexnet", "vgg11"):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            if device.type == "cpu" and name == "bf16":
                continue
            result[f"{arch}_train_{name}"] = train_rate(arch, device, batch, steps, dtype)
            result[f"{arch}_eval_{name}"] = eval_rate(arch, device, batch * 4, steps, dtype)
            print(json.dumps({k: v for k, v in result.items() if k.startswith(arch)}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
