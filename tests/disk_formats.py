"""Writers of tiny datasets in their real on-disk formats: CIFAR-10 pickles, CelebA folder, LSUN lmdb, images."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def py2_pickle(obj: dict, py2_strings: list[str]) -> bytes:
    """A protocol-2 pickle in which `py2_strings` are Python 2 byte strings (SHORT_BINSTRING), as in the CIFAR-10
    files pickled by Python 2: pickle.load(encoding="bytes") gives b"data", encoding="latin1" gives "data"."""
    blob = pickle.dumps(obj, protocol=2)
    for text in py2_strings:
        raw = text.encode()
        unicode_op = b"X" + len(raw).to_bytes(4, "little") + raw  # BINUNICODE
        assert blob.count(unicode_op) >= 1, text
        blob = blob.replace(unicode_op, b"U" + bytes([len(raw)]) + raw)  # SHORT_BINSTRING
    return blob


def write_cifar10(root: Path, per_file: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta; returns the training data and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_data, train_labels = [], []
    for i, name in enumerate(CIFAR_FILES):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        data[0, :2] = (0, 255)  # the full range, so [-1, 1] is hit exactly
        labels = [int(x) for x in rng.integers(0, 10, per_file)]
        batch = {"batch_label": f"batch {i}", "labels": labels, "data": data, "filenames": ["x.png"] * per_file}
        (folder / name).write_bytes(py2_pickle(batch, ["batch_label", "labels", "data", "filenames"]))
        if name != "test_batch":
            train_data.append(data)
            train_labels += labels
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_file, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta, ["label_names", "num_cases_per_batch", "num_vis"]))
    return np.concatenate(train_data), np.array(train_labels)


def trust_cifar10(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """torchvision verifies each CIFAR-10 file against the md5 of the real download (no public switch to skip it):
    point its class-level checksum table at the files the test wrote, so the check itself still runs."""
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(folder / n)] for n in CIFAR_FILES[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def banded_image(inner: tuple[int, int, int], band: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A w x h image whose centred square is `inner` and whose remaining strips are `band`."""
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = band
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    pixels[top : top + side, left : left + side] = inner
    return Image.fromarray(pixels)


def write_celeba(root: Path, colours: list[tuple[int, int, int]], partition: list[int]) -> Path:
    """root/celeba with img_align_celeba/*.jpg (178x218) and the five annotation files torchvision reads."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(colours))]
    for name, colour in zip(names, colours, strict=True):
        banded_image(colour, (255, 0, 0), (178, 218)).save(folder / "img_align_celeba" / name, quality=95)
    attrs = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Smiling"]
    files = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, partition, strict=True)],
        "identity_CelebA.txt": [f"{n} {i + 100}" for i, n in enumerate(names)],
        "list_attr_celeba.txt": [str(len(names)), " ".join(attrs)] + [f"{n}  -1  1 -1" for n in names],
        "list_bbox_celeba.txt": [str(len(names)), "image_id x_1 y_1 width height"]
        + [f"{n} 95 71 226 313" for n in names],
        "list_landmarks_align_celeba.txt": [str(len(names)), "lefteye_x lefteye_y righteye_x righteye_y nose_x"]
        + [f"{n} 69 109 106 113 77" for n in names],
    }
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def trust_celeba(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """As trust_cifar10, for CelebA's checksums of its annotation files."""
    from torchvision.datasets import CelebA

    table = [(fid, md5(folder / name) if (folder / name).is_file() else h, name) for fid, h, name in CelebA.file_list]
    monkeypatch.setattr(CelebA, "file_list", table)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_lsun(root: Path, images: list[Image.Image], corrupt_at: int = -1) -> list[bytes]:
    """root/bedroom_train_lmdb: an lmdb whose values are encoded images (WebP as in LSUN, else JPEG); sorted keys."""
    import lmdb

    fmt = "WEBP" if features.check("webp") else "JPEG"
    keys = [f"{i:040x}".encode() for i in range(len(images))]
    env = lmdb.open(str(root / "bedroom_train_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (key, image) in enumerate(zip(keys, images, strict=True)):
            txn.put(key, b"not an image" if i == corrupt_at else encode(image, fmt))
    env.close()
    return keys
