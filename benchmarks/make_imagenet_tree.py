"""An ImageNet-shaped tree of real image files, for tests, benchmarks and demos.

    python -m benchmarks.make_imagenet_tree DIR --classes 1000 --train-per-class 2 --val-per-class 1
        [--seed 0] [--truncated] [--no-oddities] [--jobs N]

What ILSVRC2012 looks like to a data loader, at any size:

- `train/<wnid>/<wnid>_<k>.JPEG`: class folders named like wnids (`n` + 8 digits, drawn
  from a seed), images at ImageNet's common sizes (500x375 and its relatives, portrait and
  square ones, a few larger and smaller), each a smooth random colour field with shapes and
  pixel noise, JPEG quality 90: about 80-90 KB, so decoding costs what a photograph's does
  (PIL: 500x375 to 256 px at about 280 images/s on one core of the development VM).
- The set's oddities: a CMYK JPEG, a grayscale JPEG and a PNG named `.JPEG` among the
  training images (ILSVRC2012 has 22 CMYK JPEGs and one PNG, n02105855_2933.JPEG), a CMYK
  and a grayscale one among the validation images; optionally (`--truncated`) one training
  JPEG cut short, which `submit`'s check must refuse.
- `val/ILSVRC2012_val_<8 digits>.JPEG`, flat, classes interleaved; the devkit's
  `ILSVRC2012_validation_ground_truth.txt` (one 1-based ILSVRC2012_ID per image, in sorted
  file-name order) and `ILSVRC2012_class_ids.txt` (`ID wnid` lines). As in the devkit, the
  IDs are not in sorted-wnid order.

The grid's data section for such a tree is `Tree.data` (also printed by the command).
Everything is deterministic in `seed`: the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
CLASS_IDS = "ILSVRC2012_class_ids.txt"

#: (width, height) and weight: ILSVRC2012's most common sizes (500x375 landscape dominates).
SIZES = [((500, 375), 40), ((375, 500), 12), ((500, 333), 14), ((500, 500), 8), ((333, 500), 6),
         ((500, 400), 6), ((640, 480), 5), ((400, 300), 5), ((500, 281), 2), ((300, 225), 2)]


@dataclass
class Tree:
    root: Path
    wnids: list[str]                          # sorted: class index order
    ids: dict[int, str]                       # ILSVRC2012_ID -> wnid
    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)
    val_wnids: list[str] = field(default_factory=list)  # of each val file, in sorted name order
    oddities: dict[str, Path] = field(default_factory=dict)  # cmyk, gray, png, val-cmyk, val-gray, truncated

    @property
    def data(self) -> dict:
        """The grid's `data` section for this tree."""
        return {"dataset": "imagenet", "path": str(self.root), "val_labels": GROUND_TRUTH, "class_ids": CLASS_IDS}


def wnid_list(classes: int, seed: int = 0) -> list[str]:
    """`classes` distinct wnid-like names (n + 8 digits), sorted, the same for a seed."""
    rng = np.random.default_rng([seed, 7])
    numbers = rng.choice(np.arange(1_000_000, 15_200_000), classes, replace=False)
    return [f"n{int(n):08d}" for n in sorted(numbers)]


def picture(rng: np.random.Generator, width: int, height: int):
    """A PIL RGB image: a smooth random colour field, a few filled shapes, pixel noise."""
    from PIL import Image, ImageDraw

    small = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    pixels = np.asarray(im, dtype=np.int16) + rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _size(rng: np.random.Generator) -> tuple[int, int]:
    weights = np.array([w for _, w in SIZES], dtype=np.float64)
    return SIZES[int(rng.choice(len(SIZES), p=weights / weights.sum()))][0]


def _write(path: Path, seed_key: list[int], kind: str) -> None:
    rng = np.random.default_rng(seed_key)
    im = picture(rng, *_size(rng))
    if kind == "png":
        im.save(path, "PNG")  # a PNG under a .JPEG name, as n02105855_2933.JPEG
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "gray":
        im.convert("L").save(path, "JPEG", quality=90)
    else:
        im.save(path, "JPEG", quality=90)


def make_tree(root: str | Path, classes: int = 5, train_per_class: int = 6, val_per_class: int = 2, *,
              seed: int = 0, oddities: bool = True, truncated: bool = False, jobs: int = 0) -> Tree:
    """Write the tree under `root` (created; existing files of the same names are replaced)."""
    if classes < 1 or train_per_class < 1 or val_per_class < 1:
        raise ValueError("classes, train_per_class and val_per_class must be at least 1")
    root = Path(root)
    wnids = wnid_list(classes, seed)
    # ILSVRC2012_IDs: a seeded permutation, so ID order is not sorted-wnid order
    perm = np.random.default_rng([seed, 11]).permutation(classes)
    ids = {i + 1: wnids[int(c)] for i, c in enumerate(perm)}
    id_of = {w: i for i, w in ids.items()}
    tree = Tree(root=root, wnids=wnids, ids=ids)

    jobs_list: list[tuple[Path, list[int], str]] = []
    odd_train = {}
    if oddities:  # (class, image) of each oddity, spread over classes
        for i, kind in enumerate(("cmyk", "gray", "png")):
            odd_train[(i % classes, (i // classes) % train_per_class)] = kind
    for c, w in enumerate(wnids):
        folder = root / "train" / w
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            path = folder / f"{w}_{k:05d}.JPEG"
            kind = odd_train.get((c, k), "rgb")
            if kind != "rgb":
                tree.oddities[kind] = path
            jobs_list.append((path, [seed, 1, c, k], kind))
            tree.train.append(path)
    n_val = classes * val_per_class
    val_classes = np.random.default_rng([seed, 13]).permutation(np.arange(n_val) % classes)  # interleaved
    odd_val = {1 % n_val: "cmyk", 2 % n_val: "gray"} if oddities else {}
    (root / "val").mkdir(parents=True, exist_ok=True)
    for k in range(n_val):
        path = root / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        kind = odd_val.get(k, "rgb")
        if kind != "rgb":
            tree.oddities[f"val-{kind}"] = path
        jobs_list.append((path, [seed, 2, int(val_classes[k]), k], kind))
        tree.val.append(path)
        tree.val_wnids.append(wnids[int(val_classes[k])])

    workers = jobs or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL encodes without the GIL
        list(pool.map(lambda job: _write(*job), jobs_list))

    if truncated:
        victim = tree.train[-1]
        data = victim.read_bytes()
        victim.write_bytes(data[: int(len(data) * 0.6)])  # header intact, scan data cut short
        tree.oddities["truncated"] = victim

    (root / GROUND_TRUTH).write_text("".join(f"{id_of[w]}\n" for w in tree.val_wnids))
    (root / CLASS_IDS).write_text("".join(f"{i} {w}\n" for i, w in sorted(ids.items())))
    return tree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=2)
    ap.add_argument("--val-per-class", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truncated", action="store_true", help="cut one training JPEG short (must fail verification)")
    ap.add_argument("--no-oddities", action="store_true", help="no CMYK, grayscale or PNG files")
    ap.add_argument("--jobs", type=int, default=0, help="writer threads (default: cores, at most 8)")
    args = ap.parse_args(argv)
    began = time.perf_counter()
    tree = make_tree(args.dir, args.classes, args.train_per_class, args.val_per_class, seed=args.seed,
                     oddities=not args.no_oddities, truncated=args.truncated, jobs=args.jobs)
    files = tree.train + tree.val
    mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(tree.train)} training and {len(tree.val)} validation images of {len(tree.wnids)} classes "
          f"({mb:,.1f} MB) in {time.perf_counter() - began:.1f} s under {tree.root}", file=sys.stderr)
    for kind, path in tree.oddities.items():
        print(f"  {kind}: {path}", file=sys.stderr)
    print(json.dumps({"data": tree.data}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
