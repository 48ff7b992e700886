"""Evaluation statistics that add up across processes: feature moments, Frechet distance, Inception-score sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) on a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(num: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's half-open slice [r*num//world, (r+1)*num//world) of the global sample indices 0..num-1."""
    return rank * num // world, (rank + 1) * num // world


def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """The element-wise sums over processes, in one all_reduce call (the tensors themselves on one process)."""
    if rank_world()[1] == 1:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


def gather_rows(local: Tensor, counts: list[int]) -> Tensor:
    """Concatenates every rank's rows in rank order; `counts` are all ranks' row counts (known to every rank)."""
    width = max(counts)
    if len(counts) == 1 or width == 0:
        return local
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def main_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the others (which then find what rank 0 cached); one call on a single process."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others are released from the barrier
            error = err
    dist.barrier()
    if error is not None:
        raise error
    return fn() if rank != 0 else result  # type: ignore[return-value]


@dataclass
class Moments:
    """Sum, sum of outer products and count of feature vectors (float64): all a mean and covariance need."""

    total: Tensor
    outer: Tensor
    count: Tensor

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str = "cpu") -> Moments:
        kw = {"dtype": torch.float64, "device": device}
        return cls(torch.zeros(dim, **kw), torch.zeros(dim, dim, **kw), torch.zeros((), **kw))

    def add(self, features: Tensor) -> None:
        x = features.double()
        self.total += x.sum(0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def reduced(self) -> Moments:
        return Moments(*all_reduce_sum(self.total, self.outer, self.count))

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        """Mean and unbiased covariance."""
        mean = self.total / self.count
        return mean, (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), the squared W2 distance between two Gaussians.

    Tr (C1 C2)^(1/2) is taken as Tr (C1^(1/2) C2 C1^(1/2))^(1/2): the same eigenvalues, but of a symmetric PSD matrix,
    so no complex square roots appear when C1 C2 is singular (fewer samples than feature dimensions).
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root = _sqrt_psd(cov1)
    middle = root @ cov2 @ root
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_root)


@dataclass
class ScoreSums:
    """Per split of the samples: sum of sum_y p log p, sum of p(y|x), and count; the Inception score from them."""

    plogp: Tensor  # (splits,)
    p: Tensor  # (splits, classes)
    count: Tensor  # (splits,)

    @classmethod
    def zeros(cls, splits: int, classes: int, device: torch.device | str = "cpu") -> ScoreSums:
        kw = {"dtype": torch.float64, "device": device}
        return cls(torch.zeros(splits, **kw), torch.zeros(splits, classes, **kw), torch.zeros(splits, **kw))

    def add(self, logits: Tensor, index: Tensor, num: int) -> None:
        """Class logits of the samples with global indices `index` (of `num`); sample i goes to split i*splits//num."""
        log_p = torch.log_softmax(logits.double(), dim=1)
        split = (index.to(log_p.device) * self.count.shape[0]) // num
        self.plogp.index_add_(0, split, (log_p.exp() * log_p).sum(1))
        self.p.index_add_(0, split, log_p.exp())
        self.count.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))

    def reduced(self) -> ScoreSums:
        return ScoreSums(*all_reduce_sum(self.plogp, self.p, self.count))

    def score(self) -> tuple[float, float]:
        """Mean and standard deviation over splits of exp(E_x KL(p(y|x) || p(y))), p(y) the split's marginal."""
        used = self.count > 0
        count = self.count[used]
        marginal = self.p[used] / count[:, None]
        kl = self.plogp[used] / count - torch.special.xlogy(marginal, marginal).sum(1)
        scores = kl.exp()
        return float(scores.mean()), float(scores.std(unbiased=False)) if scores.numel() > 1 else 0.0
