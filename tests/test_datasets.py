"""Each dataset through its real torchvision class, from small files in the real on-disk format; missing-data errors."""

import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from disk_formats import banded_image, trust_celeba, trust_cifar10, write_celeba, write_cifar10, write_lsun
from PIL import Image

from trainer.data.files import ImageOptions, UnreadableImageWarning, load_cifar10, open_image_folder
from trainer.data.registry import load_torchvision_labelled, make_batches
from trainer.errors import TrainerError

CPU = torch.device("cpu")


def drain(batches, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [batches.next_labelled() for _ in range(count)]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def assert_unit_range(images: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert images.dtype == torch.float32 and images.shape == shape
    assert images.min() >= -1 and images.max() <= 1


def test_cifar10_pickles_keep_python2_keys(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        assert {b"data", b"labels"} <= set(pickle.load(f, encoding="bytes"))  # what Python 2 wrote


def test_cifar10_through_torchvision(tmp_path, monkeypatch):
    data, labels = write_cifar10(tmp_path)
    trust_cifar10(monkeypatch, tmp_path)
    images, targets = load_cifar10(str(tmp_path), download=False)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    # A CIFAR-10 row is 1024 red, 1024 green, 1024 blue values, each plane row-major.
    assert torch.equal(images, torch.from_numpy(data).reshape(20, 3, 32, 32))
    assert targets.tolist() == labels.tolist()
    batches = make_batches("cifar10", str(tmp_path), False, 32, 10, CPU, 0, 1, seed=0)
    x, y = drain(batches, 2)
    assert_unit_range(x, (20, 3, 32, 32))
    assert x.min() == -1 and x.max() == 1 and batches.num_classes == 10
    order = torch.cat([batches.order.shard(0)])
    assert torch.equal(x, images[order].float() / 127.5 - 1) and y.tolist() == labels[order.numpy()].tolist()


def test_cifar10_checksums_still_guard_real_runs(tmp_path):
    write_cifar10(tmp_path)  # not the real files: torchvision's md5 check refuses them, and the message says why
    with pytest.raises(TrainerError, match="failing torchvision's checks.*data.download=true.*data_batch_1.*md5"):
        load_cifar10(str(tmp_path), download=False)


def test_cifar10_offline_download_explains(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(TrainerError, match="downloading into .* failed .*no internet"):
        load_cifar10(str(tmp_path), download=True)


def test_mnist_labels(tmp_path):
    from test_data import write_mnist

    train = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    write_mnist(tmp_path / "MNIST" / "raw", train, train[:2])
    images, labels = load_torchvision_labelled("mnist", str(tmp_path), download=False)
    assert torch.equal(images[:, 0], train) and labels.tolist() == [i % 10 for i in range(12)]
    x, y = make_batches("mnist", str(tmp_path), False, 28, 4, CPU, 0, 1, seed=2).next_labelled()
    assert_unit_range(x, (4, 1, 28, 28))
    index = [int(torch.nonzero((train.float() / 127.5 - 1 == img[0]).flatten(1).all(1))[0]) for img in x]
    assert y.tolist() == [i % 10 for i in index]


def test_celeba_train_split_centre_crop(tmp_path, monkeypatch):
    colours = [(10 * i + 40, 200 - 20 * i, 90) for i in range(6)]
    folder = write_celeba(tmp_path, colours, partition=[0, 0, 1, 0, 2, 0])
    trust_celeba(monkeypatch, folder)
    batches = make_batches("celeba", str(tmp_path), False, 64, 2, CPU, 0, 1, seed=0)
    x, _ = drain(batches, 2)
    assert_unit_range(x, (4, 3, 64, 64))
    pixels = ((x + 1) * 127.5).flatten(2)  # the red bands outside the centred square must not show
    train = torch.tensor([colours[i] for i in (0, 1, 3, 5)], dtype=torch.float32)
    found = pixels.mean(2)
    assert (pixels - found[:, :, None]).abs().max() < 30  # JPEG blurs the edges a little; a red band is ~200 off
    assert torch.cdist(found, train).min(dim=1).values.max() < 4  # every image is one of the train-split faces
    assert len({tuple(c.round().tolist()) for c in found}) == 4


def test_celeba_missing_says_what_to_put_where(tmp_path):
    with pytest.raises(TrainerError, match=r"celeba.*list_eval_partition.*img_align_celeba/000001\.jpg"):
        make_batches("celeba", str(tmp_path), False, 64, 2, CPU, 0, 1, seed=0)


FOLDER = {  # file -> (colour, class): top-level subfolders are classes, images in the root form class "."
    "cats/a.png": ((200, 10, 10), "cats"),
    "cats/deep/b.jpg": ((10, 200, 10), "cats"),
    "dogs/c.png": ((10, 10, 200), "dogs"),
    "top.png": ((120, 120, 120), "."),
}


def write_folder(root) -> None:
    """FOLDER's images (40x30), a text file, and a corrupt dogs/bad.png."""
    for name, (colour, _) in FOLDER.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), colour).save(root / name, quality=95)
    (root / "notes.txt").write_text("not an image")
    (root / "dogs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))


def test_image_folder_recursive_classes_and_corrupt_file(tmp_path):
    write_folder(tmp_path)
    dataset = open_image_folder(str(tmp_path), False, ImageOptions(16))
    assert dataset.base.classes == [".", "cats", "dogs"] and dataset.num_classes == 3 and len(dataset) == 5
    batches = make_batches("imagefolder", str(tmp_path), False, 16, 5, CPU, 0, 1, seed=0, labelled=True)
    with pytest.warns(UnreadableImageWarning, match=r"dogs[/\\]bad\.png"):
        x, y = batches.next_labelled()
    assert_unit_range(x, (5, 3, 16, 16))
    assert batches.skipped == 1 and sorted(batches.last_indices.tolist()) == [0, 1, 2, 3, 4]
    colours = torch.tensor([colour for colour, _ in FOLDER.values()], dtype=torch.float32)
    distance, which = torch.cdist(((x + 1) * 127.5).mean((2, 3)), colours).min(dim=1)
    assert distance.max() < 4 and set(which.tolist()) == {0, 1, 2, 3}  # bad.png's slot holds a readable image
    classes = [dataset.base.classes.index(cls) for _, cls in FOLDER.values()]
    assert y.tolist() == [classes[i] for i in which.tolist()]


def test_image_folder_crop_options(tmp_path):
    banded_image((0, 0, 250), (250, 250, 0), (60, 30)).save(tmp_path / "wide.png")
    centre = open_image_folder(str(tmp_path), False, ImageOptions(8))[0][0]
    stretched = open_image_folder(str(tmp_path), False, ImageOptions(8, crop="none"))[0][0]
    assert centre.shape == stretched.shape == (3, 8, 8)
    assert centre[0].max() < 5 and centre[2].min() > 245  # only the blue centred square
    assert stretched[0, :, 0].min() > 245 and stretched[2, :, 4].min() > 245  # the yellow sides are kept
    cropped = open_image_folder(str(tmp_path), False, ImageOptions(8, crop_size=10))[0][0]
    assert cropped[2].min() > 245 and cropped[0].max() < 5


@pytest.mark.parametrize("make, match", [(lambda p: p / "nope", "is not a folder"), (lambda p: p, "no image files")])
def test_image_folder_missing_or_empty(tmp_path, make, match):
    with pytest.raises(TrainerError, match=match):
        make_batches("imagefolder", str(make(tmp_path)), False, 16, 1, CPU, 0, 1, seed=0)


def test_image_folder_one_class_cannot_be_conditional(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    with pytest.raises(TrainerError, match="model.conditional=true needs class labels"):
        make_batches("imagefolder", str(tmp_path), False, 8, 1, CPU, 0, 1, seed=0, labelled=True)


class _Payload:
    """A pickle whose only effect, when unpickled, is to create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_lsun_lmdb(tmp_path, monkeypatch):
    import pickle
    import string

    pytest.importorskip("lmdb")
    colours = [(30 * i, 250 - 30 * i, 128) for i in range(6)]
    write_lsun(tmp_path, [banded_image(c, (255, 255, 255), (48, 36)) for c in colours], corrupt_at=2)
    monkeypatch.chdir(tmp_path / "bedroom_train_lmdb")  # torchvision writes its key cache into the working dir
    monkeypatch.setenv("WGAN_GP_CACHE", str(tmp_path / "cache"))
    # torchvision's own cache name for this lmdb; planted beside the data, where the trainer used to let it look
    lmdb_root = str((tmp_path / "bedroom_train_lmdb").resolve())
    name = "_cache_" + "".join(c for c in lmdb_root if c in string.ascii_letters)
    marker = tmp_path / "payload-ran"
    (tmp_path / name).write_bytes(pickle.dumps(_Payload(marker)))
    pickle.loads((tmp_path / name).read_bytes()).close()  # control: unpickled, the payload does run
    assert marker.exists()
    marker.unlink()
    batches = make_batches("lsun-bedroom", str(tmp_path), False, 16, 3, CPU, 0, 1, seed=0)
    with pytest.warns(UnreadableImageWarning, match=r"bedroom_train_lmdb key 0+2\b"):
        x, _ = drain(batches, 2)
    assert_unit_range(x, (6, 3, 16, 16)) and batches.skipped == 1
    found = ((x + 1) * 127.5).mean((2, 3))
    good = torch.tensor([c for i, c in enumerate(colours) if i != 2], dtype=torch.float32)
    assert torch.cdist(found, good).min(dim=1).values.max() < 6
    assert not marker.exists()  # the planted file was never read
    assert list((tmp_path / "cache" / "lsun-keys").glob("_cache_*"))  # the key cache sits in the trainer's own cache


def test_lsun_missing_says_how_to_get_it(tmp_path):
    pytest.importorskip("lmdb")
    with pytest.raises(TrainerError, match=r"bedroom_train_lmdb.*download\.py -c bedroom"):
        make_batches("lsun-bedroom", str(tmp_path), False, 64, 2, CPU, 0, 1, seed=0)
