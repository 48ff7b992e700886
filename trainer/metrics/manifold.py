"""Precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020) from k-NN balls of features."""

from __future__ import annotations

import torch
from torch import Tensor

PR_K, DC_K = 3, 5  # the papers' neighbourhood sizes: k = 3 for precision/recall, k = 5 for density/coverage
MAX_FEATURES = 10_000  # features per side (real and generated), as for KID
CHUNK = 2048  # rows of a distance block: 2048 x 10,000 float64 = 160 MB at most


def _blocks(a: Tensor, b: Tensor):
    """(row offset, Euclidean distances of a block of a's rows to all of b) in float64."""
    for start in range(0, a.shape[0], CHUNK):
        yield start, torch.cdist(a[start : start + CHUNK], b)


def knn_radii(features: Tensor, k: int) -> Tensor:
    """Distance from each row to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
    x = features.double()
    if x.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} feature vectors, got {x.shape[0]}")
    return torch.cat([d.kthvalue(k + 1, dim=1).values for _, d in _blocks(x, x)])


def inside_counts(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each point, how many balls B(centre_i, radii_i) hold it (strictly inside)."""
    p, c = points.double(), centres.double()
    return torch.cat([(d < radii[None, :]).sum(1) for _, d in _blocks(p, c)])


def nearest_point_inside(centres: Tensor, radii: Tensor, points: Tensor) -> Tensor:
    """For each ball B(centre_i, radii_i), whether its nearest point lies strictly inside it."""
    c, p = centres.double(), points.double()
    return torch.cat([d.min(dim=1).values < radii[start : start + d.shape[0]] for start, d in _blocks(c, p)])


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_K) -> dict[str, float]:
    """Improved precision and recall: the share of fakes inside the real manifold (the union of each real feature's
    k-NN ball) and the share of reals inside the fake manifold."""
    precision = (inside_counts(fake, real, knn_radii(real, k)) > 0).double().mean()
    recall = (inside_counts(real, fake, knn_radii(fake, k)) > 0).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: Tensor, fake: Tensor, k: int = DC_K) -> dict[str, float]:
    """density = E_fake[number of real k-NN balls holding it] / k (1 for matched distributions, unbounded above);
    coverage = share of real k-NN balls that hold at least one fake (robust to outliers among the fakes)."""
    radii = knn_radii(real, k)
    density = inside_counts(fake, real, radii).double().sum() / (k * fake.shape[0])
    coverage = nearest_point_inside(real, radii, fake).double().mean()
    return {"density": float(density), "coverage": float(coverage)}


def manifold_metrics(real: Tensor, fake: Tensor) -> dict[str, float]:
    """precision, recall (k = 3), density, coverage (k = 5) of fake features against real features."""
    return {**precision_recall(real, fake), **density_coverage(real, fake)}
