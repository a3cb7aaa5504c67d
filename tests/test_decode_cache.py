"""A decode cache's bytes are checked against the checksum its builder recorded: a damaged
cache (random bytes of the right size) is removed with a warning and built again, and
training never reads it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from benchmarks.make_imagenet_tree import make_tree
from hpcxfer.fileio import read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study
from hpcxfer.worker import decode_cache


def _build(folder, images: np.ndarray, kept: bool = True) -> decode_cache.DecodeCache:
    cache = decode_cache.DecodeCache(folder, "k", len(images), images.shape[1:], kept)
    builder = cache.claim()
    builder.write(np.arange(len(images)), images)
    builder.mark(np.arange(len(images)))
    assert builder.finish()
    return cache


def _fresh(cache: decode_cache.DecodeCache) -> decode_cache.DecodeCache:
    """The same cache as another process sees it (nothing verified yet)."""
    decode_cache._VERIFIED.clear()
    return decode_cache.DecodeCache(cache.folder, cache.key, cache.count, cache.shape, cache.kept)


def test_a_damaged_cache_is_removed_with_a_warning_and_built_again(tmp_path, caplog):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    cache = _build(tmp_path, images)
    assert read_json(cache.checksum)["crc32"] == decode_cache.crc32_of(cache.path)
    assert np.array_equal(_fresh(cache).open(), images)  # a clean cache opens in another process

    cache.path.write_bytes(os.urandom(cache.nbytes))  # same size: only the checksum tells
    with caplog.at_level(logging.WARNING):
        assert _fresh(cache).open() is None
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warned) == 1 and "checksum does not match" in warned[0], warned
    assert not cache.path.exists() and not cache.checksum.exists()
    again = _build(tmp_path, images)  # the next pass builds it again
    assert np.array_equal(_fresh(again).open(), images)

    cache.checksum.unlink()  # a cache without its checksum is not trusted either
    assert _fresh(cache).open() is None and not cache.path.exists()


@pytest.mark.slow  # three short trainings
def test_training_on_a_damaged_cache_gives_the_clean_result(tmp_path):
    tree = make_tree(tmp_path / "tree", classes=4, train_per_class=12, val_per_class=3)
    kept = tmp_path / "kept"
    env = {**os.environ, "HPCXFER_THREADS": "1", "OMP_NUM_THREADS": "1", "HPCXFER_CACHE": str(tmp_path / "c")}

    def train(name: str, setting: str) -> tuple[dict, str]:
        grid_file = tmp_path / f"{name}.yaml"
        grid_file.write_text(yaml.safe_dump({
            "study": name, "root": str(tmp_path / "runs"), "data": {**tree.data, "image_size": 32, "crop": 32},
            "pretrain": {"epochs": 3, "batch_size": 4, "examples_per_class": "full", "decay_every": 2},
            "finetune": {"split": [0], "examples_per_class": [4], "epochs": 1, "batch_size": 4},
            "experiments": [{"protocol": ["common"]}],
            "runtime": {"eval_every": 1, "tensorboard": False, "data_memory_gb": 0, "loader_workers": 0,
                        "decode_cache": setting}}))
        grid = load_grid(grid_file)
        tasks = expand(grid)
        paths = study_paths(grid)
        write_study(paths, grid, tasks)
        out = subprocess.run([sys.executable, "-m", "hpcxfer", "run-task", str(paths.dir), "0"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        tp = paths.task(tasks[0].task_id)
        result = read_json(tp.result)
        return {k: result[k] for k in ("val_acc", "val_loss", "train_loss", "train_acc")}, tp.log.read_text()

    clean, _ = train("clean", "off")
    built, _ = train("built", str(kept))
    assert built == clean  # the cache is bit-identical to decoding
    shards = sorted(kept.glob("*.u8"))
    assert shards, list(kept.iterdir())
    for shard in shards:
        shard.write_bytes(os.urandom(shard.stat().st_size))
    damaged, log = train("damaged", str(kept))
    assert damaged == clean, (damaged, clean)
    assert log.count("is damaged (its checksum does not match): removed, and decoded again") == len(shards), log
    assert all(json.loads(s.with_name(s.name + ".crc32").read_text())["crc32"] == decode_cache.crc32_of(s)
               for s in shards)  # built again, whole
