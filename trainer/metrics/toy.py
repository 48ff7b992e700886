"""Offline metrics for the 2-D toys: exact W1 by optimal assignment, modes covered, fraction of high-quality samples."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from trainer.data.toys import MODES  # noqa: F401 - mode centres and std, next to the samplers that use them

W1_POINTS = 2000  # generated and real points in the exact W1 (an n x n assignment: about a second at 2,000)
COVERED_SHARE = 0.2  # a covered mode holds at least this fraction of the uniform share of the samples
QUALITY_STDS = 3.0  # a high-quality sample lies within this many standard deviations of a mode centre


def w1_exact(generated: Tensor, real: Tensor) -> float:
    """Exact Wasserstein-1 distance between two equal-size point sets with uniform weights.

    Between two uniform measures on n points each the optimal transport plan is a permutation (Birkhoff), so W1 is
    the mean Euclidean cost of the optimal assignment, which linear_sum_assignment finds exactly.
    """
    if generated.shape != real.shape:
        raise ValueError(f"exact W1 needs equal-size point sets, got {tuple(generated.shape)} and {tuple(real.shape)}")
    cost = torch.cdist(generated.double().cpu(), real.double().cpu()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def high_quality_counts(points: Tensor, centres: Tensor, std: float) -> Tensor:
    """Per mode, how many points lie within QUALITY_STDS standard deviations of it (their nearest centre); float64."""
    distance, nearest = torch.cdist(points.double(), centres.to(points.device)).min(dim=1)
    good = distance <= QUALITY_STDS * std
    return torch.bincount(nearest[good], minlength=centres.shape[0]).double()


def mode_summary(counts: Tensor, total: int) -> dict[str, float]:
    """modes_covered and the high_quality fraction, as in the mode-collapse papers (Metz et al. 2017, VEEGAN, PacGAN).

    A sample is high quality when it lies within 3 standard deviations of its nearest mode centre; a mode is covered
    when it holds at least a fifth of the high-quality samples a uniform spread would give it (PacGAN: 20 of 100).
    """
    threshold = max(1.0, COVERED_SHARE * total / counts.numel())
    return {"modes_covered": float((counts >= threshold).sum()), "high_quality": float(counts.sum() / total)}


def real_w1(dataset: str, num: int, reference_seed: int, draws: int = 5) -> float:
    """The real-vs-real floor of w1_exact: independent real sets of `num` points (seeds 100, 101, ...) against the
    scorer's own real set (seed `reference_seed`, as trainer.metrics.evaluate draws it), averaged over `draws`."""
    from trainer.data.toys import TOYS

    reference = TOYS[dataset](num, generator=torch.Generator().manual_seed(reference_seed))
    sets = [TOYS[dataset](num, generator=torch.Generator().manual_seed(100 + k)) for k in range(draws)]
    return sum(w1_exact(s, reference) for s in sets) / draws
