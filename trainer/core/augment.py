"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): random colour,
translation and cutout applied to every image the critic sees, real and fake alike, differentiable in the image.

The operations follow the paper's reference code (DiffAugment_pytorch.py): per sample, brightness + U[-0.5, 0.5],
saturation x U[0, 2] around the pixel's channel mean, contrast x U[0.5, 1.5] around the image mean; a shift by up
to 1/8 of the side with zero fill; one zeroed square of half the side. Their random numbers come from torch's global
generator on the images' device, which checkpoints save and restore, so resumed runs stay exact.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def brightness(x: Tensor) -> Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def saturation(x: Tensor) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Each image shifted by (dy, dx), |d| <= round(ratio * side), the uncovered border zero."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, size=(n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, size=(n, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )  # fmt: skip
    gy = torch.clamp(gy + dy + 1, 0, h + 1)  # +1: index into the zero-padded image
    gx = torch.clamp(gx + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[b, gy, gx].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Each image with one square of round(ratio * side) zeroed at a random centre (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), size=(n, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), size=(n, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device),
        indexing="ij",
    )  # fmt: skip
    gy = torch.clamp(gy + oy - ch // 2, min=0, max=h - 1)
    gx = torch.clamp(gx + ox - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, gy, gx] = 0
    return x * mask.unsqueeze(1)


POLICIES: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def identity(x: Tensor) -> Tensor:
    """No augmentation (data.augment unset): the very tensor, and no random number drawn."""
    return x


def parse_policy(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def diff_augment(policy: str) -> Callable[[Tensor], Tensor]:
    """The augmentation for `policy` ("color,translation,cutout", any subset in any order; "" = identity)."""
    names = parse_policy(policy)
    if not names:
        return identity
    ops = [op for name in names for op in POLICIES[name]]

    def augment(x: Tensor) -> Tensor:
        for op in ops:
            x = op(x)
        return x.contiguous()

    return augment
