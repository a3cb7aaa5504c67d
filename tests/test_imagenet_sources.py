"""Beyond ILSVRC2012: a generic class-folder source, CIFAR in torchvision's format, and
VGG-11 with AlexNet's eight-layer numbering."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hpcxfer.data import open_dataset
from hpcxfer.errors import DataError


def test_generic_class_folders_any_names_and_formats(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCXFER_CACHE", str(tmp_path / "cache"))
    for part, n in (("train", 3), ("val", 2)):
        for cls in ("zebra", "apple", "mango"):
            for k in range(n):
                ext = ".png" if k % 2 else ".jpg"
                (tmp_path / "d" / part / cls).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20 + k, 24), (k * 60, 10, 10)).save(tmp_path / "d" / part / cls / f"{k}{ext}")
    (tmp_path / "d" / "train" / "apple" / "notes.txt").write_text("ignored: not an image")
    ds = open_dataset("folders", str(tmp_path / "d"), {"image_size": 16, "crop": 12})
    assert ds.classes == ["apple", "mango", "zebra"]
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.train.path(1).endswith("apple/1.png")
    assert ds.train.load(np.array([0, 8])).shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="data.path"):
        open_dataset("folders", None, {})


def _cifar_batch(path, n, label_key, classes, rng):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = (np.arange(n) % classes).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, f)
    return data


@pytest.mark.parametrize("name, folder, train, test, key, classes", [
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    ("cifar100", "cifar-100-python", ["train"], "test", b"fine_labels", 100),
])
def test_cifar_in_torchvisions_format(tmp_path, name, folder, train, test, key, classes):
    rng = np.random.default_rng(0)
    root = tmp_path / folder
    root.mkdir()
    first = [_cifar_batch(root / f, 200, key, classes, rng) for f in train][0]
    _cifar_batch(root / test, 100, key, classes, rng)
    ds = open_dataset(name, str(tmp_path))  # the parent folder works too
    assert ds.num_classes == classes and len(ds.train.labels) == 200 * len(train) and len(ds.val.labels) == 100
    img = ds.train.load(np.array([3]))
    assert img.shape == (1, 3, 32, 32) and torch.equal(img[0].flatten(), torch.from_numpy(first[3]))
    assert (ds.augment, ds.crop) == ("pad-crop-flip", None)


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / f).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not allowed"):
        open_dataset("cifar10", str(root))


def test_vgg11_numbers_its_layers_like_alexnet():
    from hpcxfer.worker import protocol
    from hpcxfer.worker.models import NUM_LAYERS, build_model, layer_prefixes, weight_layers

    with torch.device("meta"):  # 133 M parameters: structure only, no memory, no init time
        model = build_model("vgg11", 5, 3)
    layers = weight_layers(model, "vgg11")
    assert len(layers) == NUM_LAYERS == 8
    # every parameter belongs to exactly one layer
    ids = [id(p) for layer in layers for p in layer.parameters()]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # stages: conv3 is two convolutions, fc8 has one output per class
    assert sum(1 for m in layers[2].modules() if isinstance(m, torch.nn.Conv2d)) == 2
    assert layers[7].out_features == 5
    # transfer n = 3 copies conv1, conv2 and both convolutions of stage 3, nothing else
    copied = sorted({k.rsplit(".", 1)[0] for k in model.state_dict()
                     if any(k.startswith(p) for p in layer_prefixes("vgg11")[:3])})
    assert copied == ["features.0", "features.3", "features.6", "features.8"]
    protocol.freeze(model, "vgg11", 3)
    groups = protocol.param_groups(model, "vgg11", high_lr_layers=1, frozen_layers=3, lr_high=0.01,
                                   lr_low=0.001, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["low", "high"]
    assert sum(p.numel() for p in groups[1]["params"]) == 4096 * 5 + 5
    assert all(p.requires_grad is False for p in model.features[8].parameters())
    assert all(p.requires_grad for p in model.features[11].parameters())
