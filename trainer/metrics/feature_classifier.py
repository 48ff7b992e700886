"""A small CNN trained on real digits/MNIST/Fashion-MNIST, cached; its features and classes score generators."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from trainer.data import registry
from trainer.data.batches import to_unit_range
from trainer.data.registry import resize_uint8
from trainer.metrics.moments import Moments

# The datasets it scores: those whose registry entry asks for the classifier metrics.
DATASETS = tuple(name for name, spec in registry.DATASETS.items() if spec.metrics == "classifier")
VERSION = 3  # part of the cache file name: bump when the network, its training or the cached statistics change
MAX_REAL_FEATURES = 10_000  # real feature vectors kept for precision/recall and density/coverage
FEATURES = 128
CLASSES = 10  # the head's width when none is given; load_or_train sizes it by the dataset's spec (num_classes)
SEED, TEST_SHARE, BATCH, LR = 0, 1 / 6, 64, 2e-3
MIN_EPOCHS, MIN_STEPS = 3, 500  # trains for whichever is longer (digits: 500 steps, MNIST: 3 epochs)
CACHE_ENV = "WGAN_GP_CACHE"


class FeatureClassifier(nn.Module):
    """(N, 1, S, S) in [-1, 1] -> (penultimate features (N, 128), class logits (N, num_classes)); any side S >= 4."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64 * 2 * 2, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(x)
        return features, self.head(features)


@dataclass
class Reference:
    """What the cache holds: the trained classifier, the real images' feature statistics, its test accuracy.

    real_features: the features of up to MAX_REAL_FEATURES real images (a fixed seeded subset), for the k-NN metrics;
    real_count: how many real images the mean and covariance are over.
    """

    model: FeatureClassifier
    real_mean: Tensor
    real_cov: Tensor
    accuracy: float
    real_features: Tensor
    real_count: int

    def weights_sha256(self) -> str:
        """sha256 of the classifier's tensors (names and float32 bytes, in name order): which extractor it was."""
        return tensors_sha256({k: v.float() for k, v in self.model.state_dict().items()})

    def reference_sha256(self) -> str:
        """sha256 of the real statistics it compares with (mean, covariance, kept features)."""
        return tensors_sha256({"mean": self.real_mean, "cov": self.real_cov, "features": self.real_features})


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """eval.cache_dir, else $WGAN_GP_CACHE, else ~/.cache/wgan-gp."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wgan-gp").expanduser()


def cache_path(cache_dir: Optional[str], dataset: str, image_size: int) -> Path:
    return cache_root(cache_dir) / "classifiers" / f"{dataset}-{image_size}px-v{VERSION}.safetensors"


def load_labelled(dataset: str, root: str, image_size: int) -> tuple[Tensor, Tensor]:
    """The training split (the registry's loader) as uint8 (N, 1, S, S) images resized like trainer.data.registry
    does, and int64 labels."""
    spec = registry.DATASETS.get(dataset)  # the live entry, not DATASETS above: an entry added later counts too
    if spec is None or spec.metrics != "classifier" or spec.load is None:
        raise ValueError(f"{dataset} has no feature classifier; the datasets that have one: {', '.join(DATASETS)}")
    images, labels = spec.load(root, False)  # never downloads: the data module's errors say how to get the files
    return resize_uint8(images, image_size), labels.long()


def train_classifier(
    images: Tensor, labels: Tensor, seed: int = SEED, num_classes: int = CLASSES
) -> tuple[FeatureClassifier, float]:
    """Trains on a fixed 5/6 of (images, labels), returns the model (eval mode) and its accuracy on the other 1/6."""
    # fork_rng leaves the caller's (the training loop's) RNG streams untouched; evaluate() runs under no_grad.
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(seed)
        order = torch.randperm(images.shape[0])
        n_test = int(images.shape[0] * TEST_SHARE)
        test, train = order[:n_test], order[n_test:]
        model = FeatureClassifier(num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        steps = max(MIN_STEPS, MIN_EPOCHS * train.numel() // BATCH)
        for _ in range(steps):
            batch = train[torch.randint(0, train.numel(), (BATCH,))]
            loss = F.cross_entropy(model(to_unit_range(images[batch]))[1], labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [model(to_unit_range(images[test[i : i + 1000]]))[1].argmax(1) for i in range(0, n_test, 1000)]
        )
    return model, float((predicted == labels[test]).float().mean())


@torch.no_grad()
def feature_moments(model: FeatureClassifier, images: Tensor) -> Moments:
    moments = Moments.zeros(FEATURES)
    for start in range(0, images.shape[0], 1000):
        moments.add(model(to_unit_range(images[start : start + 1000]))[0])
    return moments


@torch.no_grad()
def kept_features(model: FeatureClassifier, images: Tensor) -> Tensor:
    """Features of up to MAX_REAL_FEATURES real images: a fixed (seed 0) random subset when there are more."""
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(SEED))[:MAX_REAL_FEATURES]
    return torch.cat([model(to_unit_range(images[part]))[0] for part in chosen.sort().values.split(1000)])


def save_reference(ref: Reference, path: Path) -> None:
    """Written to a temporary name and renamed, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in ref.model.state_dict().items()}
    tensors.update(real_mean=ref.real_mean.contiguous(), real_cov=ref.real_cov.contiguous())
    tensors.update(real_features=ref.real_features.contiguous())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"test_accuracy": repr(ref.accuracy), "version": str(VERSION), "real_count": str(ref.real_count)}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_reference(path: Path) -> Reference:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        accuracy, count = float(f.metadata()["test_accuracy"]), int(f.metadata()["real_count"])
    model = FeatureClassifier(tensors["model.head.weight"].shape[0])  # as many classes as it was trained with
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    return Reference(model.eval(), tensors["real_mean"], tensors["real_cov"], accuracy, tensors["real_features"], count)


def load_or_train(dataset: str, root: str, image_size: int, cache_dir: Optional[str] = None) -> Reference:
    """The cached reference for (dataset, image_size), trained and cached first when there is none.

    The classifier sees images as the generator makes them (resized to data.image_size, in [-1, 1]). Its penultimate
    features give a Frechet distance to the real training images, its class probabilities a classifier Inception
    score exp(E KL(p(y|x) || p(y))). It trains on the CPU with a fixed seed on 5/6 of the training split (the rest
    measures its accuracy) and is cached as safetensors with the real images' feature mean and covariance.
    """
    path = cache_path(cache_dir, dataset, image_size)
    if path.is_file():
        return load_reference(path)
    images, labels = load_labelled(dataset, root, image_size)
    model, accuracy = train_classifier(images, labels, num_classes=registry.DATASETS[dataset].num_classes)
    mean, cov = feature_moments(model, images).mean_cov()
    ref = Reference(model, mean, cov, accuracy, kept_features(model, images), images.shape[0])
    save_reference(ref, path)
    print(
        f"[wgan-gp] trained the {dataset} {image_size}px feature classifier: test accuracy {accuracy:.4f}; "
        f"cached at {path}",
        file=sys.stderr,
        flush=True,
    )
    return ref
