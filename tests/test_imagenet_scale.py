"""ImageNet at scale, on a generated tree shaped like ILSVRC2012 (benchmarks/make_imagenet_tree.py):
its oddities (CMYK, grayscale, a PNG named .JPEG, a truncated file), the decode cache of
the streamed path (bit-identical training, whole or nothing, sized against the disk), the
nvJPEG path's CPU fallback routing, and a file that fails at run time."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmarks.make_imagenet_tree import CLASS_IDS, GROUND_TRUTH, make_tree
from hpcxfer.data import check_data, nvjpeg, open_dataset
from hpcxfer.data.folders import check_header, decode
from hpcxfer.errors import ConfigError, DataError
from hpcxfer.fileio import atomic_write_json, iter_jsonl, read_json
from hpcxfer.grid import expand, load_grid
from hpcxfer.study import study_paths, write_study
from hpcxfer.grid.task import Task
from hpcxfer.worker import decode_cache, train
from hpcxfer.worker.feed import Streamed
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.worker.learners import prepare_data

EXACT = ("val_acc", "val_loss", "train_acc", "train_loss")
SMALL = {"image_size": 32, "crop": 32}


@pytest.fixture(autouse=True)
def cache_dirs(tmp_path, monkeypatch):
    """The index cache and the node-local folder (`auto` takes $TMPDIR here) in tmp_path;
    whatever a test's caches left is removed after it."""
    monkeypatch.setenv("HPCXFER_CACHE", str(tmp_path / "hpcxfer-cache"))
    for var in decode_cache.LOCAL_ENV:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "node").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node"))
    yield tmp_path / "node" / decode_cache.SUBFOLDER
    decode_cache.remove_owned()
    decode_cache._PLANNED.clear()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """4 classes x 8 training and 2 validation images, oddities included (about 0.5 s)."""
    return make_tree(tmp_path_factory.mktemp("imagenet"), classes=4, train_per_class=8, val_per_class=2)


# ---------------------------------------------------------------- the generated tree
def test_the_generator_makes_an_ilsvrc2012_shaped_tree(tree, tmp_path):
    ds = open_dataset("imagenet", str(tree.root), {**tree.data, **SMALL})
    assert ds.classes == tree.wnids == sorted(tree.wnids)
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in tree.wnids)
    # the devkit's IDs are not sorted-wnid order, and the labels still come out right
    ids = dict(line.split() for line in (tree.root / CLASS_IDS).read_text().splitlines())
    assert [ids[str(i)] for i in range(1, 5)] != tree.wnids
    assert len((tree.root / GROUND_TRUTH).read_text().split()) == len(tree.val) == 8
    assert [ds.classes[c] for c in ds.val.labels] == tree.val_wnids
    assert ds.train.labels.tolist() == [c for c in range(4) for _ in range(8)]
    # ImageNet's sizes and real content (not one colour), JPEG unless an oddity
    sizes = set()
    for path in tree.train + tree.val:
        with Image.open(path) as im:
            sizes.add(im.size)
            if path not in tree.oddities.values():
                assert (im.format, im.mode) == ("JPEG", "RGB")
                assert np.asarray(im).std() > 20 and 250 <= max(im.size) <= 640
    assert len(sizes) >= 3
    with Image.open(tree.oddities["cmyk"]) as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    with Image.open(tree.oddities["gray"]) as im:
        assert (im.format, im.mode) == ("JPEG", "L")
    with Image.open(tree.oddities["png"]) as im:
        assert im.format == "PNG" and tree.oddities["png"].suffix == ".JPEG"
    # deterministic: the same arguments give the same bytes
    again = make_tree(tmp_path / "again", classes=4, train_per_class=8, val_per_class=2)
    assert [p.read_bytes() for p in again.train[:5]] == [p.read_bytes() for p in tree.train[:5]]


def _reference(path: Path, size: int) -> np.ndarray:
    """PIL's own conversion to RGB, then the short side to `size` and the centre square."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        h, w = nvjpeg.target_size(im.size[1], im.size[0], size)
        im = im.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1).astype(int)


@pytest.mark.parametrize("kind", ["cmyk", "gray", "png", "val-cmyk", "val-gray"])
def test_oddities_decode_to_rgb_on_both_cpu_paths(tree, kind):
    path = tree.oddities[kind]
    # at 256 px PIL decodes without DCT scaling: the worker's decode is PIL's reference exactly
    out = decode(str(path), 256)
    assert out.shape == (3, 256, 256) and out.dtype == np.uint8
    ref = _reference(path, 256)
    assert np.abs(out.astype(int) - ref).max() == 0
    # the grayscale source really is gray in all three channels
    if "gray" in kind:
        assert (out[0] == out[1]).all() and (out[1] == out[2]).all()
    # at 32 px, PIL's draft mode decodes at a reduced DCT scale: close, not equal
    assert np.abs(decode(str(path), 32).astype(int) - _reference(path, 32)).mean() < 8
    # the nvJPEG path's routing and resize, run on the CPU (torchvision's libjpeg-turbo
    # stands in for nvJPEG): CMYK and PNG go to PIL, grayscale to the batched decoder
    assemble = nvjpeg.Assemble(256, torch.device("cpu"))
    got = assemble(nvjpeg.prepare([str(path)], 256))[0].numpy().astype(int)
    assert got.shape == (3, 256, 256)
    assert np.abs(got - ref).max() <= 1 and np.abs(got - ref).mean() < 0.05
    way = {"cmyk": "cmyk", "png": "png", "gray": "gpu"}[kind.replace("val-", "")]
    assert dict(assemble.counts) == {way: 1}


def test_nvjpeg_routing_and_fallback_counts(tree):
    truncated = make_tree(tree.root.parent / "trunc", classes=1, train_per_class=2, val_per_class=1,
                          oddities=False, truncated=True).oddities["truncated"]
    kinds = {name: nvjpeg.sniff(Path(p).read_bytes()) for name, p in tree.oddities.items()}
    assert kinds == {"cmyk": "cmyk", "gray": "gray", "png": "png", "val-cmyk": "cmyk", "val-gray": "gray"}
    assert nvjpeg.sniff(tree.train[1].read_bytes()) == "jpeg"
    assert nvjpeg.sniff(truncated.read_bytes()) == "truncated"
    assert nvjpeg.sniff(b"GIF89a....") == "other"

    # a "GPU" that refuses any batch holding one particular file: the batch is retried
    # image by image, that file goes to the CPU, the others stay on the "GPU"
    refused = str(tree.train[3])
    refused_bytes = Path(refused).read_bytes()
    calls = []

    def picky(datas, device):
        calls.append(len(datas))
        if any(d.numpy().tobytes() == refused_bytes for d in datas):
            raise RuntimeError("nvjpegDecodeBatched failed")
        return nvjpeg.decode_jpegs(datas, device)

    files = [str(p) for p in (tree.train[1], tree.train[3], tree.oddities["cmyk"], tree.oddities["png"],
                              tree.train[5])]
    assemble = nvjpeg.Assemble(64, torch.device("cpu"), gpu_decode=picky)
    batch = assemble(nvjpeg.prepare(files, 64))
    assert calls == [3, 1, 1, 1]  # one batch of the three plain JPEGs, then one by one
    assert dict(assemble.counts) == {"gpu": 2, "refused": 1, "cmyk": 1, "png": 1}
    assert torch.equal(batch[1], torch.from_numpy(np.array(decode(refused, 64))))  # the CPU path's bytes exactly
    assert torch.equal(batch[2], torch.from_numpy(np.array(decode(files[2], 64))))
    assert "CPU fallback 3 (cmyk 1, png 1, refused 1)" in assemble.summary()
    # a truncated JPEG never reaches nvJPEG (which may fill it with grey): PIL refuses it
    with pytest.raises(DataError, match=f"{truncated}: cannot decode image .*truncated"):
        nvjpeg.prepare([str(truncated)], 64)


# ---------------------------------------------------------------- errors before submission
def _grid(root: Path, tree_data: dict, **over) -> dict:
    return {"study": "scale", "root": str(root / "runs"), "data": {**tree_data, **SMALL},
            "pretrain": {"epochs": 2, "batch_size": 4, "examples_per_class": "full", "decay_every": 1},
            "finetune": {"split": [0], "examples_per_class": [4], "epochs": 1, "batch_size": 4},
            "experiments": [{"protocol": ["common"]}],
            "runtime": {"eval_every": 1, "tensorboard": False, "data_memory_gb": 0, "loader_workers": 1}, **over}


@pytest.mark.parametrize("mode", ["headers", "decode"])
def test_a_truncated_file_fails_the_check_before_submission(tmp_path, write_grid, mode):
    bad = make_tree(tmp_path / "t", classes=2, train_per_class=4, val_per_class=1, truncated=True)
    victim = bad.oddities["truncated"]
    check_header(str(bad.train[0]))  # whole files pass
    grid = load_grid(write_grid(_grid(tmp_path, {**bad.data, "verify": mode})))
    with pytest.raises(DataError) as err:
        check_data(grid._source, grid.data, expand(grid))
    message = str(err.value)
    assert str(victim) in message and "truncated" in message and "\n" not in message


def test_decode_cache_setting_is_checked_on_load(tmp_path, write_grid, tree):
    for good in ("auto", "off", "/local/x", "$PBS_JOBFS/decoded", "~/decoded"):
        load_grid(write_grid(_grid(tmp_path, tree.data, runtime={"decode_cache": good})))
    with pytest.raises(ConfigError) as err:
        load_grid(write_grid(_grid(tmp_path, tree.data, runtime={"decode_cache": "decoded"})))
    assert "runtime.decode_cache" in str(err.value) and "absolute folder" in str(err.value)


# ---------------------------------------------------------------- the decode cache
def _study(root: Path, tree_data: dict, **runtime):
    """A pre-training task on the tree's 2 source classes (16 images, 4 steps an epoch,
    3 epochs), streamed, with these runtime settings."""
    grid_file = root / "grid.yaml"
    g = _grid(root, tree_data)
    g["pretrain"]["epochs"] = 3
    g["runtime"].update(runtime)
    grid_file.write_text(yaml.safe_dump(g))
    grid = load_grid(grid_file)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    return paths, paths.task(tasks[0].task_id)


def _fresh(tp, **runtime) -> None:
    config = read_json(tp.config)
    for p in tp.dir.iterdir():
        if p.is_file():
            p.unlink()
    atomic_write_json(tp.config, {**config, "runtime": {**config["runtime"], **runtime}})


class StopAfter:
    def __init__(self, steps: int):
        self.left, self.signum = steps, 10

    def __bool__(self) -> bool:
        self.left -= 1
        return self.left <= 0


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.slow  # trains
def test_training_is_bit_identical_with_and_without_the_cache(tmp_path, tree, cache_dirs, caplog):
    paths, tp = _study(tmp_path, tree.data, decode_cache="off")
    plain = train.run(paths, tp)
    assert plain["data_path"] == "stream" and not cache_dirs.exists()
    weights = torch.load(tp.weights, weights_only=True)
    metrics = list(iter_jsonl(tp.metrics))

    def same(result):
        assert {k: result[k] for k in EXACT} == {k: plain[k] for k in EXACT}
        assert [{k: r[k] for k in EXACT} for r in iter_jsonl(tp.metrics)] == [{k: r[k] for k in EXACT} for r in metrics]
        got = torch.load(tp.weights, weights_only=True)
        assert all(torch.equal(got[k], weights[k]) for k in weights)

    # built in the first pass (train in epoch 1, val at the first evaluation), read after
    _fresh(tp, decode_cache="auto")
    with caplog.at_level("INFO", logger="hpcxfer.worker.feed"):
        same(train.run(paths, tp))
    assert caplog.text.count("decoding 16 images into") == 1 and caplog.text.count("decoding 4 images into") == 1
    built = [n for n in _files(cache_dirs) if n.endswith(".u8")]
    assert len(built) == 2 and not [n for n in _files(cache_dirs) if n.endswith(".partial")]
    # what the cache holds is exactly what decoding gives, slot by slot
    config = read_json(tp.config)
    p = prepare_data(Task.from_dict(config), config["data"], RuntimeSettings.of_config(config))
    assert isinstance(p.train, Streamed) and p.train._mode() == "read"
    assert np.array_equal(p.train.reader, p.train.images.load(p.train.indices).numpy())
    # a second task of the process (same set) reads it from the first step, decoding nothing
    caplog.clear()
    _fresh(tp, decode_cache="auto")
    with caplog.at_level("INFO", logger="hpcxfer.worker.feed"):
        same(train.run(paths, tp))
    assert "decoding" not in caplog.text and caplog.text.count("reading") == 2
    # stopped in mid-pass while building: the resumed run rebuilds and fills in what it skipped
    decode_cache.remove_owned()
    del p
    _fresh(tp, decode_cache="auto", checkpoint_minutes=60)
    with pytest.raises(train.Interrupted):
        train.run(paths, tp, StopAfter(2))
    assert [n for n in _files(cache_dirs) if n.endswith(".partial")]
    gc.collect()  # the stopped run's feed is gone, as when its process ends
    caplog.clear()
    with caplog.at_level("INFO", logger="hpcxfer.worker.feed"):
        result = train.run(paths, tp)
    same(result)
    assert result["restarts"] == 1 and "decoding the 8 images this pass skipped" in caplog.text
    decode_cache.remove_owned()
    assert _files(cache_dirs) == []


def test_a_half_written_cache_is_never_used(tmp_path, tree, cache_dirs):
    ds = open_dataset("imagenet", str(tree.root), {**tree.data, **SMALL})
    idx = np.arange(8)
    labels = torch.zeros(8, dtype=torch.long)
    expected = ds.train.load(idx)
    feed = Streamed(ds.train, idx, labels, torch.device("cpu"), 0, _opts("auto"))
    cache = feed.cache
    cache_dirs.mkdir(parents=True)
    # a complete-looking file of the wrong size (a copy cut short) is ignored
    cache.path.write_bytes(b"\0" * (cache.nbytes - 1))
    assert cache.open() is None
    cache.path.unlink()
    # a build by a live process elsewhere: this feed decodes, and leaves that build alone
    other = {"host": "another-node", "pid": 12345, "start": 1}
    cache.lock.write_text(json.dumps(other))
    cache.partial.write_bytes(b"\1" * 100)
    assert _pass(feed, expected) == "decode"
    assert cache.partial.read_bytes() == b"\1" * 100
    # the same build by a process of this host that is gone: removed, rebuilt, then read
    gone = {**decode_cache.me(), "pid": _dead_pid()}
    cache.lock.write_text(json.dumps(gone))
    assert _pass(feed, expected) == "build"
    assert cache.path.stat().st_size == cache.nbytes and not cache.partial.exists()
    assert _pass(feed, expected) == "read"


def _opts(setting: str):
    from hpcxfer.worker.feed import StreamOptions

    return StreamOptions(decode_cache=setting, gpu_decode=True)


def _batches(feed: Streamed) -> tuple[str, torch.Tensor]:
    """One pass in shuffled order; (mode, images put back in set order)."""
    mode = feed._mode()
    order = torch.randperm(len(feed), generator=torch.Generator().manual_seed(1))
    out = torch.cat([x for x, _ in feed.batches(order, 3)])
    back = torch.empty_like(out)
    back[order] = out
    return mode, back


def _pass(feed: Streamed, expected: torch.Tensor) -> str:
    """One pass; its mode, once its images are checked against `expected`."""
    mode, images = _batches(feed)
    assert torch.equal(images, expected)
    return mode


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_cache_too_big_for_the_disk(tmp_path, tree, cache_dirs, monkeypatch, caplog):
    ds = open_dataset("imagenet", str(tree.root), {**tree.data, **SMALL})
    idx = np.arange(8)
    labels = torch.zeros(8, dtype=torch.long)
    real = decode_cache.shutil.disk_usage
    # a 10 GB disk with 1 GiB + 10 kB free: the reserve (1 GiB) leaves less than the 24.6 kB needed

    def nearly_full(path):
        usage = real(path)
        return type(usage)(10**10, 10**10 - (1 << 30) - 10_000, (1 << 30) + 10_000)

    monkeypatch.setattr(decode_cache.shutil, "disk_usage", nearly_full)
    # auto: no cache, a warning, and every pass decodes
    with caplog.at_level("WARNING"):
        feed = Streamed(ds.train, idx, labels, torch.device("cpu"), 0, _opts("auto"))
    assert feed.cache is None and "24.6 kB needed for 8 decoded images, 1.07 GB free" in caplog.text
    assert _batches(feed)[0] == "decode" and not cache_dirs.exists()
    # a named folder: refused before the first step, one line naming the folder
    named = tmp_path / "mine"
    with pytest.raises(DataError) as err:
        Streamed(ds.train, idx, labels, torch.device("cpu"), 0, _opts(str(named)))
    message = str(err.value)
    assert message == (f"runtime.decode_cache: {named}: 24.6 kB needed for 8 decoded images, 1.07 GB free; "
                       "keeping 1.07 GB free (name a folder with room, use auto, or off to decode every pass)")
    assert "\n" not in message
    # with room, a named folder's cache is kept after the process is done with it
    monkeypatch.setattr(decode_cache.shutil, "disk_usage", real)
    feed = Streamed(ds.train, idx, labels, torch.device("cpu"), 0, _opts(str(named)))
    _batches(feed)
    decode_cache.remove_owned()
    assert _files(named) == sorted([feed.cache.path.name, feed.cache.checksum.name])


# ---------------------------------------------------------------- a file that fails at run time
@pytest.mark.slow  # a worker process
def test_an_unreadable_file_at_run_time_fails_the_task_naming_it(tmp_path, tree, cli):
    root = tmp_path / "copy"
    bad = make_tree(root, classes=4, train_per_class=8, val_per_class=2)
    paths, tp = _study(tmp_path, {**bad.data, "verify": "none"}, loader_workers=1)
    source_class = open_dataset("imagenet", str(root), {**bad.data, **SMALL}).classes
    from hpcxfer.data import class_split

    victim = root / "train" / source_class[class_split(4, 0)[0][-1]]
    victim = sorted(victim.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:3000])  # cut short after the checks would have run
    env = {"TMPDIR": os.environ["TMPDIR"], "HPCXFER_THREADS": "1"}
    out = cli("run-task", paths.dir, "0", env=env)
    assert out.returncode == 2, out.stderr
    error = read_json(tp.failed)["error"]
    assert str(victim) in error and "cannot decode image" in error and "\n" not in error
    assert str(victim) in out.stderr
    status = cli("status", paths.dir)
    assert str(victim) in " ".join(status.stdout.split()) or str(victim) in status.stdout.replace("\n", "")
    # the failed worker removed the cache it had started
    assert _files(Path(os.environ["TMPDIR"]) / decode_cache.SUBFOLDER) == []


def test_the_nvjpeg_feed_path_builds_and_reads_its_own_cache(tree, cache_dirs, monkeypatch, caplog):
    """The streamed path as it runs on a GPU, run on the CPU: loader processes read the files
    and decode the CMYK and PNG ones, the training process decodes the rest with
    torchvision (nvJPEG's stand-in), writes the cache and later reads it back."""
    monkeypatch.setattr(nvjpeg, "available", lambda device: True)
    ds = open_dataset("imagenet", str(tree.root), {**tree.data, **SMALL})
    idx = np.arange(len(ds.train.labels))  # the oddities included
    labels = torch.from_numpy(ds.train.labels)
    feed = Streamed(ds.train, idx, labels, torch.device("cpu"), 1, _opts("auto"))
    assert feed.assemble is not None and feed.cache.path.name.startswith("nvjpeg-32px-")
    with caplog.at_level("INFO", logger="hpcxfer.worker.feed"):
        mode, built = _batches(feed)
    assert mode == "build" and feed._mode() == "read"
    assert "nvJPEG decoded 30 images; CPU fallback 2 (cmyk 1, png 1)" in caplog.text
    # close to the PIL path (different decoders and resizes), and the cache holds exactly what was built
    pil = ds.train.load(idx)
    assert (built.float() - pil.float()).abs().mean() < 8
    assert torch.equal(torch.from_numpy(feed.reader.copy()), built)
    assert _pass(feed, built) == "read"
