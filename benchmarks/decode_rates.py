"""JPEG decoding images/s on one CPU core: PIL (the worker's CPU path) against torchvision's
decode_jpeg on the CPU (libjpeg-turbo; the nvJPEG path's geometry), on the files of a
generated ImageNet-shaped tree (benchmarks/make_imagenet_tree.py: ImageNet's sizes, about
85 KB each).

    PYTHONPATH=. python -m benchmarks.decode_rates [--images 300] [--sizes 256 32] [--tree DIR]

Rows: `pil` is `hpcxfer.data.folders.decode` (PIL, draft mode: a reduced DCT scale when the
target is small, convert to RGB, bilinear antialiased resize, centre square);
`torchvision` is `decode_jpeg` to RGB at full size, then `nvjpeg.resize_centre` (the same
output); `... decode only` leave out the resize. One thread, files in the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.make_imagenet_tree import make_tree
from hpcxfer.data import nvjpeg
from hpcxfer.data.folders import decode


def rate(fn, items, repeat: int = 2) -> float:
    """Images/s of fn over items, the best of `repeat` passes (after one warm-up image)."""
    fn(items[0])
    best = 0.0
    for _ in range(repeat):
        began = time.perf_counter()
        for it in items:
            fn(it)
        best = max(best, len(items) / (time.perf_counter() - began))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 32])
    ap.add_argument("--tree", help="an existing tree (its first --images training files)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = None
    if args.tree:
        files = sorted(str(p) for p in Path(args.tree, "train").glob("*/*.JPEG"))[: args.images]
    else:
        tmp = tempfile.TemporaryDirectory()
        tree = make_tree(tmp.name, classes=max(1, args.images // 10), train_per_class=10, val_per_class=1,
                         oddities=False)
        files = [str(p) for p in tree.train[: args.images]]
    datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files]
    kb = sum(len(d) for d in datas) / len(datas) / 1000
    print(f"{len(files)} JPEGs, mean {kb:.0f} KB; one thread; cpu: {os.cpu_count()} cores visible", flush=True)
    cpu = torch.device("cpu")
    out: dict = {"images": len(files), "mean_kb": round(kb, 1)}
    out["torchvision decode only"] = rate(lambda d: nvjpeg.decode_jpegs([d], cpu), datas)

    def pil_only(f):
        from PIL import Image
        with Image.open(f) as im:
            im.convert("RGB")

    out["pil decode only"] = rate(pil_only, files)
    for size in args.sizes:
        out[f"pil {size} px"] = rate(lambda f: decode(f, size), files)
        out[f"torchvision {size} px"] = rate(
            lambda d: nvjpeg.resize_centre(nvjpeg.decode_jpegs([d], cpu)[0][None], size), datas)
    for k, v in out.items():
        print(f"{k:>26}: {v:,.0f}" if isinstance(v, float) else f"{k:>26}: {v}")
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
