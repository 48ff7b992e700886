"""Image datasets through torchvision's own classes: CIFAR-10 into memory; CelebA, LSUN and image folders streamed.

Streamed datasets yield (uint8 image (3, S, S), label, index, replaced): a centred square crop, an antialiased
resize to S, nothing random (flips are drawn per batch from the shared order, see trainer.data.batches). A file that
cannot be decoded is replaced by the next readable one and reported with its path, so one bad file never stops a run.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from trainer.errors import TrainerError

CROPS = ("center", "none")


@dataclass(frozen=True)
class ImageOptions:
    size: int  # output side in pixels
    crop: str = "center"  # center: a centred square (crop_size, or the shorter side) | none: stretch to a square
    crop_size: int = 0  # side of the centred square in source pixels; 0 = the shorter side


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of uint8 (N, C, H, W) images to (size, size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def to_uint8(image: Any, options: ImageOptions) -> Tensor:
    """A PIL image -> uint8 (3, S, S): RGB, centred square crop (unless crop=none), antialiased resize."""
    from torchvision.transforms.functional import pil_to_tensor

    x = pil_to_tensor(image.convert("RGB"))
    if options.crop == "center":
        h, w = x.shape[-2:]
        side = min(h, w, options.crop_size or min(h, w))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top : top + side, left : left + side]
    return resize_uint8(x.unsqueeze(0), options.size)[0]


class UnreadableImageWarning(UserWarning):
    pass


class SafeImages(Dataset):
    """(uint8 image, label, index, replaced) from a torchvision dataset of (PIL image, target) pairs.

    An image that fails to load or decode is skipped with a warning naming it, and the next readable index takes
    its place (`replaced` counts the skipped files), so batches keep their size and order stays deterministic.
    """

    def __init__(self, base: Any, options: ImageOptions, describe: Callable[[int], str], num_classes: int = 0):
        self.base, self.options, self.describe, self.num_classes = base, options, describe, num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int]:
        for tries in range(64):
            i = (index + tries) % len(self.base)
            try:
                image, target = self.base[i]
                return to_uint8(image, self.options), int(target or 0), index, tries
            except Exception as err:  # noqa: BLE001 - any decoder error of one file must not stop a run
                what = f"{type(err).__name__}: {err}"
                warnings.warn(f"skipped unreadable image {self.describe(i)} ({what})", UnreadableImageWarning, 2)
        raise TrainerError(f"64 images in a row from {self.describe(index)} on could not be read; is the data intact?")


def _missing(name: str, where: Path, fix: str) -> TrainerError:
    problem = f"the dataset was not found in {where} (missing, or failing torchvision's checks)"
    return TrainerError(f"data.name={name}: {problem}. {fix}")


def _offline(name: str, root: str, err: Exception, fix: str) -> TrainerError:
    return TrainerError(
        f"data.name={name}: downloading into {root} failed ({err}). This machine may have no internet: download "
        f"once on a machine that has it (python train.py data.name={name} data.download=true train.steps=1) and "
        f"copy data.root here, or: {fix}"
    )


def torchvision_dataset(name: str, root: str, where: Path, fix: str, make: Callable[[], Any]) -> Any:
    """make() with torchvision's missing-data, download and format errors turned into one TrainerError with the fix;
    a dataset whose images and labels differ in number is refused too."""
    try:
        dataset = make()
    except RuntimeError as err:
        text = str(err).lower()
        if "gdown" in text:
            raise TrainerError(f"data.name={name}: data.download=true needs gdown (pip install gdown). {fix}") from None
        if "not found" not in text and "corrupted" not in text:
            raise _unreadable(name, where, err, fix) from None
        raise _missing(name, where, fix) from None
    except OSError as err:  # URLError and socket errors are OSErrors
        raise _offline(name, root, err, fix) from None
    except (AssertionError, ValueError, EOFError, IndexError, KeyError, TypeError) as err:  # a file's format is off
        raise _unreadable(name, where, err, fix) from None
    images, labels = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if images is not None and labels is not None and len(images) != len(labels):
        raise TrainerError(
            f"data.name={name}: the files in {where} hold {len(images)} images but {len(labels)} labels (a cut or "
            f"mismatched file). {fix}"
        )
    return dataset


def _unreadable(name: str, where: Path, err: Exception, fix: str) -> TrainerError:
    what = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return TrainerError(
        f"data.name={name}: the files in {where} are there but could not be read ({what}); one is cut off or not in "
        f"the expected format (a wrong magic number, a truncated download). Delete them and {fix[0].lower()}{fix[1:]}"
    )


def load_cifar10(root: str, download: bool) -> tuple[Tensor, Tensor]:
    """CIFAR-10's 50,000 training images as uint8 (N, 3, 32, 32) and their labels, via torchvision.datasets.CIFAR10."""
    from torchvision.datasets import CIFAR10

    where = Path(root, CIFAR10.base_folder)
    fix = (
        f"Set data.download=true, or extract cifar-10-python.tar.gz into data.root (data_batch_1..5, test_batch, "
        f"batches.meta in {where}); torchvision checks each file's md5."
    )
    dataset = torchvision_dataset(
        "cifar10", root, where, fix, lambda: CIFAR10(root=root, train=True, download=download)
    )
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets, dtype=torch.long)


def open_celeba(root: str, download: bool, options: ImageOptions) -> SafeImages:
    """CelebA's aligned training split (162,770 faces, 178x218) via torchvision.datasets.CelebA, streamed."""
    from torchvision.datasets import CelebA

    where = Path(root, CelebA.base_folder)
    fix = (
        f"Download img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt, identity_CelebA.txt, "
        f"list_bbox_celeba.txt and list_landmarks_align_celeba.txt from the CelebA page, unzip so that "
        f"{where}/img_align_celeba/000001.jpg exists, and put the text files in {where} (torchvision checks their md5)."
    )
    make = lambda: CelebA(root=root, split="train", target_type=[], download=download)  # noqa: E731
    dataset = torchvision_dataset("celeba", root, where, fix, make)
    return SafeImages(dataset, options, partial(_file_in, str(where / "img_align_celeba"), dataset.filename))


def _file_in(folder: str, names: list[str], index: int) -> str:
    return os.path.join(folder, names[index])


def _lmdb_key(where: str, keys: list[bytes], index: int) -> str:
    return f"{where} key {keys[index].decode(errors='replace')}"


@contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """torchvision's LSUN pickles its key cache into the working directory and unpickles whatever file of that name
    it finds there: run it in a folder only this user can write (the trainer's cache), never beside the data or in
    /tmp, where anyone could plant a pickle that runs code."""
    previous = os.getcwd()
    os.chdir(private_cache_dir())
    try:
        yield
    finally:
        os.chdir(previous)


def private_cache_dir() -> Path:
    """$WGAN_GP_CACHE (or ~/.cache/wgan-gp)/lsun-keys, created 0700 (torchvision names each cache file after the
    data's root); refused if another user can write to it."""
    folder = Path(os.environ.get("WGAN_GP_CACHE") or Path.home() / ".cache" / "wgan-gp") / "lsun-keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for part in (folder,):
        info = part.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise TrainerError(
                f"{part} (where torchvision's LSUN keeps its pickled key cache) is writable by other users or owned "
                f"by another one, so a planted file there could run code. Use a folder of your own: set WGAN_GP_CACHE."
            )
    return folder


def open_lsun_bedroom(root: str, download: bool, options: ImageOptions) -> SafeImages:
    """LSUN bedrooms (bedroom_train, 3,033,042 images) from its lmdb via torchvision.datasets.LSUN, streamed."""
    where = Path(root, "bedroom_train_lmdb").resolve()
    fix = (
        f"LSUN has no torchvision download: fetch bedroom_train_lmdb.zip with the LSUN project's download.py "
        f"(python download.py -c bedroom) and unzip it so that {where}/data.mdb exists."
    )
    try:
        import lmdb
        from torchvision.datasets import LSUN
    except ImportError:
        raise TrainerError("data.name=lsun-bedroom reads lmdb files: pip install lmdb (or .[lsun]).") from None
    if not (where / "data.mdb").is_file():
        raise _missing("lsun-bedroom", where, fix)
    try:
        with _working_dir(where.parent):
            dataset = LSUN(str(where.parent), classes=["bedroom_train"])
    except lmdb.Error as err:
        raise TrainerError(f"data.name=lsun-bedroom: {where} could not be opened as lmdb ({err}). {fix}") from None
    return SafeImages(dataset, options, partial(_lmdb_key, str(where), dataset.dbs[0].keys))


def open_image_folder(root: str, download: bool, options: ImageOptions) -> SafeImages:
    """Every image below data.root (recursive) via torchvision's ImageFolder; top-level subfolders are classes."""
    from trainer.data.image_folder import FolderImages, sample_path

    hint = "Point data.root at a folder of images (searched recursively; one class per top-level subfolder)."
    if not Path(root).is_dir():
        raise TrainerError(f"data.name=imagefolder: data.root={root} is not a folder. {hint}")
    try:
        dataset = FolderImages(root)
    except FileNotFoundError as err:
        raise TrainerError(f"data.name=imagefolder: {err}. {hint}") from None
    num_classes = len(dataset.classes) if len(dataset.classes) > 1 else 0
    images = SafeImages(dataset, options, partial(sample_path, dataset.samples), num_classes)
    _require_decodable(images, root, hint)
    return images


def _require_decodable(images: SafeImages, root: str, hint: str) -> None:
    """At least one of the first 64 files decodes (else every batch would fail later, in a worker)."""
    first = min(len(images.base), 64)
    for i in range(first):
        try:
            images.base[i]
            return
        except Exception as err:  # noqa: BLE001 - any decoder error means the same here
            error = f"{type(err).__name__}: {err}"
    raise TrainerError(
        f"data.name=imagefolder: none of the first {first} image files under data.root={root} could be decoded "
        f"(e.g. {images.describe(0)}: {' '.join(error.split())[:200]}). {hint}"
    )
