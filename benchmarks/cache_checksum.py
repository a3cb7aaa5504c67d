"""What checking a decode cache costs: checksums of one cache file, read through a memory
map as hpcxfer/worker/decode_cache.py reads it, against reading it once.

    PYTHONPATH=. python -m benchmarks.cache_checksum --images 5000 --size 224

The default is a realistic shard: a 500-class target half at 10 images per class, decoded
at 224 px (3 x 224 x 224 bytes an image, 0.75 GB). Each figure is the best of 3, the file
in the page cache (as it is right after the build, or on the pass that opens it)."""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import tempfile
import time
import zlib

import numpy as np

from hpcxfer.worker.decode_cache import crc32_of


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    nbytes = args.images * 3 * args.size * args.size
    with tempfile.NamedTemporaryFile(suffix=".u8") as f:
        rng = np.random.default_rng(0)
        chunk = 64 << 20
        for start in range(0, nbytes, chunk):
            f.write(rng.integers(0, 256, min(chunk, nbytes - start), dtype=np.uint8).tobytes())
        f.flush()

        def over_map(fn):
            with open(f.name, "rb") as g, mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    return fn(view)
                finally:
                    view.release()

        cases = {
            "read once (np.sum over the map)": lambda: over_map(lambda v: int(np.frombuffer(v, np.uint8).sum())),
            "zlib.crc32 (crc32_of)": lambda: crc32_of(f.name),
            "zlib.adler32": lambda: over_map(zlib.adler32),
            "hashlib.sha1": lambda: over_map(lambda v: hashlib.sha1(v).digest()),
            "hashlib.blake2b": lambda: over_map(lambda v: hashlib.blake2b(v, digest_size=16).digest()),
        }
        print(f"{nbytes / 1e9:.2f} GB ({args.images} images at {args.size} px), load {os.getloadavg()[0]:.1f}")
        for name, fn in cases.items():
            fn()
            best = min(_timed(fn) for _ in range(3))
            print(f"  {name:34s} {best:6.2f} s  {nbytes / best / 1e9:5.2f} GB/s")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
