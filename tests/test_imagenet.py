"""ImageNet-style trees of real JPEG files: the three validation layouts, the cached file
index, the checks before submission, decoding and the ImageNet augmentations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpcxfer.data import check_data, index, open_dataset
from hpcxfer.errors import DataError
from hpcxfer.grid import expand, load_grid

#: Deliberately not in sorted order: ILSVRC2012_IDs are not sorted-wnid order.
WNIDS = ["n02119789", "n01440764", "n09999999", "n01443537"]
SORTED = sorted(WNIDS)
COLOURS = {w: (40 + 50 * i, 200 - 40 * i, 17 * i) for i, w in enumerate(SORTED)}


def jpeg(path: Path, wnid: str, w: int = 40, h: int = 30) -> None:
    """A solid image of the class's colour (so a test can tell classes apart by pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), COLOURS[wnid]).save(path, "JPEG", quality=95)


def make_tree(root: Path, layout: str = "folders", train_per_class: int = 6, val_per_class: int = 3) -> dict:
    """train/<wnid>/<wnid>_<k>.JPEG and val/ in `layout`; returns {val file name: wnid}."""
    for w in WNIDS:
        for k in range(train_per_class):
            jpeg(root / "train" / w / f"{w}_{k:04d}.JPEG", w)
    truth = {}
    # validation images interleaved across classes, as in ILSVRC2012_val_*.JPEG
    for k in range(val_per_class * len(WNIDS)):
        w = WNIDS[(k * 3) % len(WNIDS)]
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        truth[name] = w
        jpeg(root / "val" / (w if layout == "folders" else "") / name, w)
    ids = {w: i + 1 for i, w in enumerate(WNIDS)}  # ILSVRC2012_ID order = WNIDS order
    if layout == "devkit":
        (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ids[truth[n]]}\n" for n in sorted(truth)))
        (root / "class_ids.txt").write_text("".join(f"{i} {w}\n" for w, i in ids.items()))
    if layout == "kaggle":
        rows = [f"{n[:-5]},{w} 1 2 30 20 {w} 3 4 10 10" for n, w in truth.items()]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    return truth


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("HPCXFER_CACHE", str(folder))
    return folder / "index"


OPTS = {"image_size": 32, "crop": 24}


def open_imagenet(root: Path, **options):
    return open_dataset("imagenet", str(root), {**OPTS, **options})


def label_of_pixels(images: torch.Tensor) -> list[str]:
    """Which class colour each decoded image is (JPEG is lossy: nearest colour)."""
    mean = images.float().mean((2, 3))
    colours = torch.tensor([COLOURS[w] for w in SORTED], dtype=torch.float32)
    return [SORTED[i] for i in torch.cdist(mean, colours).argmin(1).tolist()]


@pytest.mark.parametrize("layout, options", [
    ("folders", {}),
    ("devkit", {"val_labels": "ILSVRC2012_validation_ground_truth.txt", "class_ids": "class_ids.txt"}),
    ("kaggle", {"val_labels": "LOC_val_solution.csv"}),
])
def test_validation_layouts_give_the_same_labels(tmp_path, layout, options):
    root = tmp_path / "imagenet"
    truth = make_tree(root, layout)
    ds = open_imagenet(root, **options)
    assert ds.classes == SORTED and ds.num_classes == 4  # class index = sorted wnid
    # training: class by class, sorted file names within a class
    assert ds.train.labels.tolist() == [c for c in range(4) for _ in range(6)]
    assert ds.train.path(7).endswith(f"train/{SORTED[1]}/{SORTED[1]}_0001.JPEG")
    # validation: every image carries its own class, whatever the layout
    got = {Path(ds.val.path(i)).name: SORTED[c] for i, c in enumerate(ds.val.labels)}
    assert got == truth
    images = ds.val.load(np.arange(len(ds.val.labels)))
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 32, 32)
    assert label_of_pixels(images) == [SORTED[c] for c in ds.val.labels]
    assert (ds.augment, ds.crop, ds.image_size) == ("resized-crop-flip", 24, 32)


def test_devkit_class_ids_from_meta_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    root = tmp_path / "imagenet"
    truth = make_tree(root, "devkit")
    # the devkit's synsets: leaves (num_children 0) carry ILSVRC2012_ID 1..C; inner nodes follow
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array([(i + 1, w, w, 0) for i, w in enumerate(WNIDS)] + [(5, "n00001740", "entity", 4)],
                       dtype=dtype)
    sio.savemat(root / "meta.mat", {"synsets": synsets})
    ds = open_imagenet(root, val_labels="ILSVRC2012_validation_ground_truth.txt", class_ids="meta.mat")
    assert {Path(ds.val.path(i)).name: SORTED[c] for i, c in enumerate(ds.val.labels)} == truth


def test_sorted_wnid_list_is_refused_as_class_ids(tmp_path):
    root = tmp_path / "imagenet"
    make_tree(root, "devkit")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} some words\n" for w in SORTED))
    with pytest.raises(DataError, match="not ILSVRC2012_ID order"):
        open_imagenet(root, val_labels="ILSVRC2012_validation_ground_truth.txt",
                      class_ids="LOC_synset_mapping.txt")
    # one wnid per line in ID order is accepted
    (root / "ids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    open_imagenet(root, val_labels="ILSVRC2012_validation_ground_truth.txt", class_ids="ids.txt")


def test_file_index_is_built_once_and_reused(tmp_path, cache, monkeypatch):
    root = tmp_path / "imagenet"
    make_tree(root)
    scans = []
    real_scan = index.scan
    monkeypatch.setattr(index, "scan", lambda folder, flat=False: scans.append(folder) or real_scan(folder, flat))
    first = open_imagenet(root)
    assert len(scans) == 2 and len(list(cache.glob("*.json.gz"))) == 2  # train and val
    second = open_imagenet(root)
    assert len(scans) == 2  # reused, not rebuilt
    assert second.train.labels.tolist() == first.train.labels.tolist()
    assert [second.train.path(i) for i in range(24)] == [first.train.path(i) for i in range(24)]
    # a file added to one class changes that folder's stamp: the index is rebuilt
    jpeg(root / "train" / SORTED[2] / "zz_extra.JPEG", SORTED[2])
    os.utime(root / "train" / SORTED[2], ns=(1, 10**18))
    third = open_imagenet(root)
    assert len(scans) == 3 and len(third.train.labels) == 25


def test_worker_side_reuse_after_check(tmp_path, cache, write_grid):
    """check_data writes the index only once the checks pass; tasks then reuse it."""
    root = tmp_path / "imagenet"
    make_tree(root)
    grid = load_grid(write_grid(_grid(root)))
    check_data(grid._source, grid.data, expand(grid))
    assert len(list(cache.glob("*.json.gz"))) == 2


def _grid(root: Path, **data) -> dict:
    return {"data": {"dataset": "imagenet", "path": str(root), **OPTS, **data},
            "pretrain": {"examples_per_class": 5},
            "finetune": {"examples_per_class": [5], "batch_size": 4}}


def _check(write_grid, root, **data):
    grid = load_grid(write_grid(_grid(root, **data)))
    check_data(grid._source, grid.data, expand(grid))


@pytest.mark.parametrize("breakage, words", [
    ("empty class", "empty class"),
    ("corrupt image", "unreadable image"),
    ("zero-byte image", "unreadable image"),
    ("too few", "fewer than the 5 per class"),
    ("no val images of a class", "no validation images of class"),
    ("stray val class", "is not a class of the training set"),
])
def test_bad_trees_are_one_clear_error_naming_the_path(tmp_path, write_grid, cache, breakage, words):
    root = tmp_path / "imagenet"
    make_tree(root)
    victim = root / "train" / SORTED[1]
    named = victim
    if breakage == "empty class":
        for f in victim.iterdir():
            f.unlink()
    elif breakage == "corrupt image":
        named = victim / f"{SORTED[1]}_0002.JPEG"
        named.write_bytes(b"this is not a JPEG file at all")
    elif breakage == "zero-byte image":
        named = victim / f"{SORTED[1]}_0000.JPEG"
        named.write_bytes(b"")
    elif breakage == "too few":
        for f in sorted(victim.iterdir())[:2]:
            f.unlink()
    elif breakage == "no val images of a class":
        named = root / "val"
        for f in (root / "val" / SORTED[1]).iterdir():
            f.unlink()
        (root / "val" / SORTED[1]).rmdir()
    elif breakage == "stray val class":
        named = root / "val" / "n07777777"
        jpeg(named / "x.JPEG", SORTED[0])
    with pytest.raises(DataError) as err:
        _check(write_grid, root)
    message = str(err.value)
    assert words in message and str(named) in message and "\n" not in message
    assert not list(cache.glob("*.json.gz"))  # nothing written


def test_flat_layout_errors(tmp_path):
    root = tmp_path / "imagenet"
    make_tree(root, "kaggle")
    with pytest.raises(DataError, match="val_labels"):
        open_imagenet(root)
    (root / "val" / "ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(DataError, match="ILSVRC2012_val_00000003: listed in .* but missing"):
        open_imagenet(root, val_labels="LOC_val_solution.csv")
    root = tmp_path / "dev"
    make_tree(root, "devkit")
    with pytest.raises(DataError, match="class_ids"):
        open_imagenet(root, val_labels="ILSVRC2012_validation_ground_truth.txt")
    gt = root / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text(gt.read_text() + "1\n")
    with pytest.raises(DataError, match="13 labels for 12 validation images"):
        open_imagenet(root, val_labels=gt.name, class_ids="class_ids.txt")


def test_cli_submit_refuses_a_bad_tree_with_exit_2_and_writes_nothing(tmp_path, write_grid, cli, cache):
    root = tmp_path / "imagenet"
    make_tree(root)
    bad = root / "train" / SORTED[3] / f"{SORTED[3]}_0001.JPEG"
    bad.write_bytes(b"\x00" * 100)
    out = cli("submit", write_grid(_grid(root)), "--backend", "local", env={"HPCXFER_CACHE": str(cache.parent)})
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert not (tmp_path / "runs").exists() and not cache.exists()


def test_decode_short_side_then_centre_square(tmp_path):
    from hpcxfer.data.folders import decode

    img = np.zeros((30, 60, 3), dtype=np.uint8)
    img[:, :15] = 255        # left quarter white: cropped away by the centre square
    img[:, 15:45] = (0, 0, 200)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = decode(str(tmp_path / "a.png"), 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    assert np.abs(out[:, :, 2:14].astype(int) - np.array([0, 0, 200])[:, None, None]).max() <= 2


def test_random_resized_crop_matches_torchvision_box_by_box():
    from torchvision.transforms.v2 import functional as TF

    from hpcxfer.worker.augment import random_resized_crop_flip, resized_crop_boxes

    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    boxes = resized_crop_boxes(6, 40, 40, torch.Generator().manual_seed(3))
    ratio = boxes[:, 3] / boxes[:, 2]
    frac = boxes[:, 2] * boxes[:, 3] / 1600
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 40).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 40).all()
    assert (frac >= 0.07).all() and (frac <= 1).all() and (ratio > 0.7).all() and (ratio < 1.4).all()

    gen = torch.Generator().manual_seed(3)
    out = random_resized_crop_flip(images, 20, gen)
    replay = torch.Generator().manual_seed(3)
    same_boxes = resized_crop_boxes(6, 40, 40, replay)
    flips = torch.rand(6, generator=replay) < 0.5
    assert torch.equal(same_boxes, boxes)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(images[i].float(), top, left, h, w, [20, 20], antialias=False)
        if flips[i]:
            ref = ref.flip(-1)
        # same box and flip; bilinear sampling agrees up to edge handling
        assert (out[i] - ref).abs().mean() < 6, i
    # the same generator state draws the same batch (exact resume)
    assert torch.equal(random_resized_crop_flip(images, 20, torch.Generator().manual_seed(3)), out)


def test_centre_crop_is_imagenets_evaluation_view():
    from hpcxfer.worker.augment import centre_crop

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    assert torch.equal(centre_crop(x, 4), x[:, :, 2:6, 2:6])


@pytest.mark.slow
def test_a_tiny_imagenet_study_runs_end_to_end(tmp_path, write_grid, cli, cache):
    root = tmp_path / "imagenet"
    make_tree(root, "kaggle", train_per_class=8)
    grid = write_grid({
        "data": {"dataset": "imagenet", "path": str(root), "val_labels": "LOC_val_solution.csv", **OPTS},
        "pretrain": {"epochs": 1, "batch_size": 8, "examples_per_class": "full"},
        "finetune": {"examples_per_class": [5], "epochs": 2, "batch_size": 5},
        "experiments": [{"protocol": ["common"]}],
    })
    out = cli("submit", grid, "--backend", "local", "--wait", env={"HPCXFER_CACHE": str(cache.parent)})
    assert out.returncode == 0, out.stdout + out.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "tiny" / "tasks").glob("*/result.json")]
    assert len(results) == 2 and all(0 <= r["val_acc"] <= 1 for r in results)
    assert len(list(cache.glob("*.json.gz"))) == 2
