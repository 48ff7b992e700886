"""The two data paths: on-device indexing and the DataLoader stream give the same batches and resume exactly."""

import pytest
import torch
from disk_formats import trust_cifar10, write_cifar10

from trainer.data.batches import ImageBatches, ShardOrder, StreamBatches
from trainer.data.files import ImageOptions, SafeImages, load_cifar10

CPU = torch.device("cpu")


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """The 20 training images of a CIFAR-10 written in its real format: (uint8 images, labels, torchvision dataset)."""
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path, per_file=4)
    trust_cifar10(monkeypatch, tmp_path)
    images, labels = load_cifar10(str(tmp_path), download=False)
    return images, labels, CIFAR10(str(tmp_path), train=True)


def stream(dataset, batch, rank, world, workers=0, flip=True) -> StreamBatches:
    safe = SafeImages(dataset, ImageOptions(32), str, num_classes=10)
    return StreamBatches(safe, batch, rank, world, seed=4, device=CPU, num_workers=workers, num_classes=10, flip=flip)


@pytest.mark.parametrize("workers", [0, 2])
def test_device_and_dataloader_paths_agree(cifar, workers):
    images, labels, dataset = cifar
    for rank in range(2):
        device = ImageBatches(images, 3, rank, 2, seed=4, labels=labels, num_classes=10, flip=True)
        streamed = stream(dataset, 3, rank, 2, workers)
        for _ in range(7):  # two epochs of 3 batches per rank, and one more
            (x_dev, y_dev), (x_str, y_str) = device.next_labelled(), streamed.next_labelled()
            assert torch.equal(x_dev, x_str) and torch.equal(y_dev, y_str)
            assert torch.equal(device.last_indices, streamed.last_indices)
        assert device.state_dict() == streamed.state_dict() == {"epoch": 2, "cursor": 3}


def test_flips_mirror_a_fixed_subset(cifar):
    images, labels, _ = cifar
    plain = ImageBatches(images, 10, 0, 1, seed=4, labels=labels, flip=False)
    mirrored = ImageBatches(images, 10, 0, 1, seed=4, labels=labels, flip=True)
    x, x_flip = plain.next(), mirrored.next()
    flipped = [bool(torch.equal(a.flip(-1), b)) and not torch.equal(a, b) for a, b in zip(x, x_flip, strict=True)]
    kept = [bool(torch.equal(a, b)) for a, b in zip(x, x_flip, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)
    assert torch.equal(
        ShardOrder(20, 10, 0, 1, 4).flips(torch.arange(20)), ShardOrder(20, 10, 0, 1, 4).flips(torch.arange(20))
    )


def indices_of(batches, count: int) -> list[list[int]]:
    out = []
    for _ in range(count):
        batches.next_labelled()
        out.append(batches.last_indices.tolist())
    return out


@pytest.mark.parametrize("stop_after", [1, 4])  # inside the first epoch, and inside the second
def test_stream_resumes_mid_epoch_on_two_ranks(cifar, stop_after):
    _, _, dataset = cifar
    for rank in range(2):
        uninterrupted = indices_of(stream(dataset, 3, rank, 2), 8)
        first = stream(dataset, 3, rank, 2, workers=1)
        head = indices_of(first, stop_after)
        state = first.state_dict()
        assert state["cursor"] % 3 == 0 and 0 < state["cursor"] < 10  # mid-epoch
        resumed = stream(dataset, 3, rank, 2, workers=1)
        resumed.load_state_dict(dict(state))
        assert head + indices_of(resumed, 8 - stop_after) == uninterrupted
    per_rank = [indices_of(stream(dataset, 3, r, 2), 3) for r in range(2)]  # one epoch on each rank
    seen = [sum(batches, []) for batches in per_rank]
    assert len(set(seen[0])) == 9 and not set(seen[0]) & set(seen[1])


def test_device_labels_follow_images():
    images = torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous()
    labels = torch.arange(12) % 5
    batches = ImageBatches(images, 4, 0, 1, seed=1, labels=labels, num_classes=5)
    for _ in range(5):
        x, y = batches.next_labelled()
        index = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
        assert torch.equal(y, index % 5)


def test_stream_leaves_the_global_rng_alone(cifar):
    """Starting a stream (also after a restore) must not draw from torch's global RNG, which feeds the noise."""
    _, _, dataset = cifar
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = stream(dataset, 3, 0, 2, workers=1)
    batches.next()
    batches.load_state_dict(batches.state_dict())
    batches.next()
    assert torch.equal(torch.rand(3), expected)


def test_train_py_resumes_a_streamed_folder_bit_for_bit(tmp_path):
    """The real entry point on an image folder (DataLoader path, a corrupt file included): 2 + 2 resumed steps give
    the metrics of 4 uninterrupted ones."""
    from conftest import TINY, ok, python_train, read_metrics
    from PIL import Image

    images = tmp_path / "images"  # not a parent of the run folders: their sample grids are images too
    images.mkdir()
    for i in range(12):
        Image.new("RGB", (12, 10), (20 * i, 255 - 20 * i, 7 * i)).save(images / f"{i:02d}.png")
    (images / "05.png").write_bytes(b"corrupt")
    args = [*TINY, "data.name=imagefolder", f"data.root={images}", "train.batch_size=4", "data.flip=true"]
    args += ["data.num_workers=1", "train.n_critic=1"]
    ok(python_train(*args, "train.steps=4", f"run.dir={tmp_path}/whole"))
    ok(python_train(*args, "train.steps=2", f"run.dir={tmp_path}/split"))
    ok(python_train(*args, "train.steps=4", f"run.dir={tmp_path}/split", "run.resume=latest"))
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [m["step"] for m in split] == [1, 2, 3, 4]
    assert [m["loss_d"] for m in split] == [m["loss_d"] for m in whole]
