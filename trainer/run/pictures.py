"""Pictures of a run: image sample grids, and for 2-D toys real vs fake points over the critic's value contour."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

MIN_SIDE = 64  # pixels per image in a saved grid: 8x8 digits at their own size say little


def upscaled(images: Tensor) -> Tensor:
    """Images blown up by a whole factor (nearest, so pixels stay pixels) to at least MIN_SIDE pixels a side."""
    factor = math.ceil(MIN_SIDE / images.shape[-1])
    return torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def save_grid(images: Tensor, path: Path) -> None:
    """Images in [-1, 1], shape (N, C, H, W), as one PNG grid (as square as N allows), each at MIN_SIDE px or more."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = upscaled(images.float().cpu())
    nrow = max(1, int(math.sqrt(images.shape[0])))
    save_image(images, str(path), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)


def save_toy_plot(
    fake: Tensor, real: Tensor, path: Path, critic: Optional[Callable[[Tensor], Tensor]] = None, title: str = ""
) -> None:
    """Scatter of real (orange) and generated (green) points over the critic's contour, as the paper's toy figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fake, real = fake.float().cpu(), real.float().cpu()
    both = torch.cat([fake, real])
    lo, hi = both.min(0).values - 0.5, both.max(0).values + 0.5
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if critic is not None:
        xs, ys = torch.linspace(lo[0], hi[0], 96), torch.linspace(lo[1], hi[1], 96)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        with torch.no_grad():
            values = critic(torch.stack([gx.flatten(), gy.flatten()], 1)).float().cpu().reshape(gx.shape)
        ax.contour(gx.numpy(), gy.numpy(), values.numpy(), levels=15, cmap="viridis", linewidths=0.8)
    ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:orange", label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:green", label="generated")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
