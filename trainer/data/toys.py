"""The paper's 2-D toy distributions (gan_toy.py): samplers, and their mode centres and spread for the metrics."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

# The paper's geometry: mode grid, per-axis noise std, and the scale the points are divided by afterwards.
EIGHT_RADIUS, EIGHT_STD, EIGHT_SCALE = 2, 0.02, 1.414
GRID_STEP, GRID_STD, GRID_SCALE = 2, 0.05, 2.828


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu") -> Tensor:
    """8 Gaussians (std 0.02) on a circle of radius 2, scaled by 1/1.414 as in the paper's toy code."""
    angle = torch.randint(0, 8, (n,), generator=generator) * (math.pi / 4)
    centers = EIGHT_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    points = centers + EIGHT_STD * torch.randn(n, 2, generator=generator)
    return (points / EIGHT_SCALE).to(device)


def twentyfive_gaussians(
    n: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu"
) -> Tensor:
    """25 Gaussians (std 0.05) on the grid {-4, -2, 0, 2, 4}^2, scaled by 1/2.828 as in the paper's toy code."""
    cell = torch.randint(0, 25, (n,), generator=generator)
    centers = GRID_STEP * torch.stack([cell // 5 - 2, cell % 5 - 2], dim=1).float()
    points = centers + GRID_STD * torch.randn(n, 2, generator=generator)
    return (points / GRID_SCALE).to(device)


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


def _eight_gaussians() -> tuple[Tensor, float]:
    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return EIGHT_RADIUS * torch.stack(
        [torch.cos(angle), torch.sin(angle)], dim=1
    ) / EIGHT_SCALE, EIGHT_STD / EIGHT_SCALE


def _twentyfive_gaussians() -> tuple[Tensor, float]:
    cell = torch.arange(25)
    return GRID_STEP * torch.stack([cell // 5 - 2, cell % 5 - 2], dim=1).double() / GRID_SCALE, GRID_STD / GRID_SCALE


# Mode centres and per-axis standard deviation, in data space, as the samplers above draw them.
MODES = {"8gaussians": _eight_gaussians(), "25gaussians": _twentyfive_gaussians()}
