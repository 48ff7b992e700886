"""Datasets as batch sources: the paper's 2-D toys, sklearn digits (offline default), MNIST and Fashion-MNIST.

Images live on the training device as uint8 and are scaled to [-1, 1] per batch, matching the generator's Tanh.
Every epoch all processes share one permutation and process r takes every world-th index, so processes see disjoint
data and the position (epoch, cursor) is the whole data state to checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.errors import TrainerError


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu") -> Tensor:
    """8 Gaussians (std 0.02) on a circle of radius 2, scaled by 1/1.414 as in the paper's toy code."""
    angle = torch.randint(0, 8, (n,), generator=generator) * (math.pi / 4)
    centers = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    points = centers + 0.02 * torch.randn(n, 2, generator=generator)
    return (points / 1.414).to(device)


def twentyfive_gaussians(
    n: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu"
) -> Tensor:
    """25 Gaussians (std 0.05) on the grid {-4, -2, 0, 2, 4}^2, scaled by 1/2.828 as in the paper's toy code."""
    cell = torch.randint(0, 25, (n,), generator=generator)
    centers = 2 * torch.stack([cell // 5 - 2, cell % 5 - 2], dim=1).float()
    points = centers + 0.05 * torch.randn(n, 2, generator=generator)
    return (points / 2.828).to(device)


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu") -> Tensor:
    """sklearn's make_swiss_roll(noise=0.25) projected on (x, z) and scaled by 1/7.5, as in the paper's toy code."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + 0.25 * torch.randn(n, 2, generator=generator)
    return (points / 7.5).to(device)


TOYS: dict[str, Callable[..., Tensor]] = {
    "8gaussians": eight_gaussians,
    "25gaussians": twentyfive_gaussians,
    "swissroll": swiss_roll,
}


def load_digits_uint8() -> Tensor:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16) as uint8 (N, 1, 8, 8) in 0..255."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()
    return (images * (255 / 16)).round().to(torch.uint8).unsqueeze(1)


def load_torchvision_uint8(name: str, root: str, download: bool) -> Tensor:
    """MNIST / Fashion-MNIST training split through torchvision's own class, as uint8 (N, 1, 28, 28)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        dataset = cls(root=root, train=True, download=download)
    except RuntimeError as err:
        if "not found" not in str(err).lower():
            raise
        raise TrainerError(
            f"data.name={name}: the dataset was not found under {Path(root, cls.__name__, 'raw')}. Set "
            f"data.download=true on a machine with internet (it is fetched once and kept under data.root={root}), "
            f"or copy the four IDX files (train-images-idx3-ubyte, ...) there and point data.root at their parent."
        ) from None
    except OSError as err:  # URLError and socket errors are OSErrors
        raise TrainerError(
            f"data.name={name}: downloading into {root} failed ({err}). This machine may have no internet: download "
            f"once on a machine that has it (e.g. a login node: python train.py data.name={name} data.download=true "
            f"train.steps=1) or copy the IDX files into {Path(root, cls.__name__, 'raw')}, then rerun."
        ) from None
    return dataset.data.unsqueeze(1).contiguous()


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of uint8 (N, C, H, W) images, done once at load time."""
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class DatasetSpec:
    is_toy: bool
    channels: int  # image channels; 2-D toys: 0
    load: Callable[[str, bool], Tensor] | None  # (root, download) -> uint8 images; None for toys


DATASETS: dict[str, DatasetSpec] = {
    **{name: DatasetSpec(True, 0, None) for name in TOYS},
    "digits": DatasetSpec(False, 1, lambda root, download: load_digits_uint8()),
    "mnist": DatasetSpec(False, 1, lambda root, download: load_torchvision_uint8("mnist", root, download)),
    "fashion-mnist": DatasetSpec(
        False, 1, lambda root, download: load_torchvision_uint8("fashion-mnist", root, download)
    ),
}


class Batches(Protocol):
    def next(self) -> Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ToyBatches:
    """Fresh points from the toy distribution each call, from the process's torch RNG (checkpointed by Accelerate)."""

    def __init__(self, name: str, batch_size: int, device: torch.device) -> None:
        self.sample, self.batch_size, self.device = TOYS[name], batch_size, device

    def next(self) -> Tensor:
        return self.sample(self.batch_size, device=self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ImageBatches:
    """Batches drawn by index from uint8 images held on the device; epoch permutations sharded across processes."""

    def __init__(self, images: Tensor, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.images, self.batch_size, self.rank, self.world, self.seed = images, batch_size, rank, world, seed
        self.per_rank = images.shape[0] // world
        if self.per_rank < batch_size:
            raise TrainerError(
                f"train.batch_size={batch_size} is larger than the {self.per_rank} images each of the {world} "
                f"processes holds ({images.shape[0]} in all). Lower train.batch_size or use fewer processes."
            )
        self.epoch, self.cursor, self._shard_epoch, self._shard = 0, 0, -1, torch.empty(0, dtype=torch.long)

    def shard(self, epoch: int) -> Tensor:
        """This process's indices for `epoch`: the same permutation on every process, every world-th element."""
        if epoch != self._shard_epoch:
            perm = torch.randperm(
                self.images.shape[0], generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            )
            self._shard, self._shard_epoch = perm[self.rank :: self.world][: self.per_rank], epoch
        return self._shard

    def next_indices(self) -> Tensor:
        if self.cursor + self.batch_size > self.per_rank:
            self.epoch, self.cursor = self.epoch + 1, 0
        indices = self.shard(self.epoch)[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return indices

    def next(self) -> Tensor:
        indices = self.next_indices().to(self.images.device)
        return self.images[indices].float() / 127.5 - 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def load_images(name: str, root: str, download: bool, image_size: int) -> Tensor:
    """uint8 (N, C, S, S) images of dataset `name` on the CPU, resized to `image_size`."""
    spec = DATASETS[name]
    assert spec.load is not None, f"{name} is a toy dataset"
    return resize_uint8(spec.load(root, download), image_size)


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
) -> Batches:
    if DATASETS[name].is_toy:
        return ToyBatches(name, batch_size, device)
    images = load_images(name, root, download, image_size).to(device)
    return ImageBatches(images, batch_size, rank, world, seed)
