"""Yosinski's class split recipe and the nested first-x subsets."""

from __future__ import annotations

import numpy as np
import pytest

from hpcxfer.data import class_split, first_per_class, open_dataset, remap
from hpcxfer.errors import DataError


@pytest.mark.parametrize("num_classes", [10, 100, 1000])
@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_split_matches_yosinskis_script(num_classes, split):
    # The recipe as his released scripts run it, on numpy's global state.
    np.random.seed(split)
    expected_source = sorted(np.random.choice(np.arange(num_classes), num_classes // 2, replace=False).tolist())
    source, target = class_split(num_classes, split)
    assert source == expected_source
    assert target == sorted(set(range(num_classes)) - set(expected_source))
    assert len(source) == len(target) == num_classes // 2


def test_split_does_not_touch_numpy_global_state():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    class_split(10, 2)
    assert (np.random.get_state()[1] == before).all()


def test_first_per_class_is_nested_and_in_canonical_order():
    labels = np.array([1, 0, 1, 2, 1, 0, 2, 1, 0, 2, 2, 1])
    small = first_per_class(labels, [1, 2], 2)
    large = first_per_class(labels, [1, 2], 3)
    assert small.tolist() == [0, 2, 3, 6]
    assert large.tolist() == [0, 2, 3, 4, 6, 9]
    assert set(small) <= set(large)
    with pytest.raises(DataError, match="class 0 has 3 images .* fewer than 4"):
        first_per_class(labels, [0], 4)


def test_remap_ascending_original_index():
    assert remap(np.array([7, 2, 9, 2]), [9, 2, 7]).tolist() == [1, 0, 2, 0]


def test_fashion_mnist_real_files():
    ds = open_dataset("fashion-mnist")
    assert ds.num_classes == 10
    assert len(ds.train.labels) == 60000 and len(ds.val.labels) == 10000
    assert np.bincount(ds.val.labels).tolist() == [1000] * 10
    images = ds.train.load(np.array([0, 1]))
    assert images.dtype.__str__() == "torch.uint8" and tuple(images.shape) == (2, 1, 28, 28)
    assert ds.train.labels[:3].tolist() == [9, 0, 0]  # the file order of the published set


def test_fashion_mnist_explicit_path_must_hold_the_files(tmp_path):
    with pytest.raises(DataError, match="no Fashion-MNIST IDX files"):
        open_dataset("fashion-mnist", str(tmp_path))
