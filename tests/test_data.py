"""Data sources: toy distributions, digits, MNIST-format files through torchvision, and the sharded sampler."""

import math
import struct
from pathlib import Path

import pytest
import torch

from trainer.data.batches import ImageBatches
from trainer.data.files import resize_uint8
from trainer.data.registry import load_digits_uint8, load_torchvision_uint8, make_batches
from trainer.data.toys import eight_gaussians, swiss_roll, twentyfive_gaussians
from trainer.errors import TrainerError

EIGHT = torch.tensor([[2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)] for k in range(8)]) / 1.414
TWENTYFIVE = torch.tensor([[2.0 * i, 2.0 * j] for i in range(-2, 3) for j in range(-2, 3)]) / 2.828


@pytest.mark.parametrize("sample, centres", [(eight_gaussians, EIGHT), (twentyfive_gaussians, TWENTYFIVE)])
def test_gaussian_mixtures_hit_every_centre(sample, centres):
    points = sample(2000, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2000, 2)
    dist, mode = torch.cdist(points, centres).min(dim=1)
    assert dist.max() < 0.2
    assert mode.unique().numel() == len(centres)


def test_swiss_roll_range():
    points = swiss_roll(2000, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2000, 2) and torch.isfinite(points).all()
    assert points.abs().max() <= 2.5 and points.abs().max() > 1.5


@pytest.mark.parametrize("sample", [eight_gaussians, twentyfive_gaussians, swiss_roll])
def test_toys_are_seeded(sample):
    def draw(seed):
        return sample(64, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_digits_uint8_and_batches_scale():
    """The digits are read from scikit-learn's CSV without importing it: the same images and labels as its loader."""
    from sklearn.datasets import load_digits

    from trainer.data.registry import load_digits_labelled

    images, labels = load_digits_labelled()
    assert torch.equal(load_digits_uint8(), images)
    assert images.dtype == torch.uint8 and images.shape == (1797, 1, 8, 8)
    expected = torch.from_numpy(load_digits().images * 255 / 16).round().to(torch.uint8)
    assert torch.equal(images[:, 0], expected) and torch.equal(labels, torch.from_numpy(load_digits().target))
    batches = ImageBatches(images, 1797, rank=0, world=1, seed=0)
    order = batches.shard(0).clone()
    batch = batches.next()
    assert batch.dtype == torch.float32 and batch.shape == (1797, 1, 8, 8)
    assert torch.equal(batch, images[order].float() / 127.5 - 1)
    assert batch.min() == -1 and batch.max() == 1


def write_idx(path: Path, array: torch.Tensor) -> None:
    magic = 0x0800 | array.dim()  # type byte 0x08 = unsigned byte, then the number of dims
    path.write_bytes(struct.pack(f">I{array.dim()}I", magic, *array.shape) + array.numpy().tobytes())


def write_mnist(raw: Path, train: torch.Tensor, test: torch.Tensor) -> None:
    raw.mkdir(parents=True)
    for split, images in (("train", train), ("t10k", test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.arange(len(images), dtype=torch.uint8) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_idx_files_round_trip(tmp_path, name, folder):
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (6, 28, 28), generator=gen, dtype=torch.uint8)
    train[0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    test = torch.randint(0, 256, (3, 28, 28), generator=gen, dtype=torch.uint8)
    write_mnist(tmp_path / folder / "raw", train, test)

    images = load_torchvision_uint8(name, str(tmp_path), download=False)
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28)
    assert torch.equal(images[:, 0], train)

    batches = make_batches(name, str(tmp_path), False, 28, 6, torch.device("cpu"), rank=0, world=1, seed=3)
    order = batches.shard(0).clone()
    batch = batches.next()
    assert torch.equal(batch, train[order].unsqueeze(1).float() / 127.5 - 1)
    assert batch.min() == -1 and batch.max() == 1


def test_missing_mnist_is_a_trainer_error(tmp_path):
    with pytest.raises(TrainerError) as info:
        load_torchvision_uint8("mnist", str(tmp_path), download=False)
    assert "data.download" in str(info.value) and str(tmp_path / "MNIST" / "raw") in str(info.value)


def indexed_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which indices were drawn."""
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()


def drawn(batches: ImageBatches) -> list[int]:
    batch = batches.next()
    return ((batch[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def test_shards_are_disjoint_and_cover_an_epoch():
    images = indexed_images(21)
    ranks = [ImageBatches(images, 5, rank=r, world=2, seed=7) for r in range(2)]
    seen = [drawn(b) + drawn(b) for b in ranks]  # 10 per rank = one epoch
    assert all(len(set(s)) == 10 for s in seen)
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 21 // 2 * 2 and set(seen[0]) <= set(range(21))
    assert all(b.state_dict() == {"epoch": 0, "cursor": 10} for b in ranks)
    assert len(set(drawn(ranks[0]) + drawn(ranks[0]))) == 10 and ranks[0].state_dict()["epoch"] == 1


def test_restored_sampler_continues_identically():
    images = indexed_images(21)
    original = ImageBatches(images, 3, rank=1, world=2, seed=5)
    for _ in range(4):
        original.next()
    restored = ImageBatches(images, 3, rank=1, world=2, seed=5)
    restored.load_state_dict(original.state_dict())
    fresh = ImageBatches(images, 3, rank=1, world=2, seed=5)
    expected = [drawn(original) for _ in range(7)]
    assert [drawn(restored) for _ in range(7)] == expected
    assert [drawn(fresh) for _ in range(7)] != expected


def test_batch_larger_than_shard_raises():
    images = indexed_images(21)
    ImageBatches(images, 10, rank=0, world=2, seed=0)
    with pytest.raises(TrainerError, match="batch_size"):
        ImageBatches(images, 11, rank=0, world=2, seed=0)


def test_resize_uint8():
    images = load_digits_uint8()[:20]
    resized = resize_uint8(images, 16)
    assert resized.dtype == torch.uint8 and resized.shape == (20, 1, 16, 16)
    constant = torch.full((2, 3, 28, 28), 200, dtype=torch.uint8)
    assert torch.equal(resize_uint8(constant, 16), torch.full((2, 3, 16, 16), 200, dtype=torch.uint8))
    assert resize_uint8(images, 8) is images
