"""The paper's ResNet pairs (gan_cifar_resnet.py for CIFAR-10 32x32, gan_64x64.py's Good* pair for 64x64), and that
64x64 pair one level deeper for 128x128."""

from __future__ import annotations

from itertools import pairwise
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from trainer.nets.layers import (
    ClassifierCritic,
    ConditionalGenerator,
    LabelledSequential,
    batch_norm,
    conv1x1,
    conv3x3,
    init_linear,
    layer_norm,
    takes_labels,
)

Norm = Callable[[int, int], nn.Module]  # (channels, num_classes) -> normalisation layer


class Upsample(nn.Module):
    """Nearest-neighbour x2, which is what the paper's concat-x4 + depth_to_space does."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class MeanPool(nn.Module):
    """The paper's 2x2 mean pool (the average of the four strided sub-grids)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm-ReLU-conv3x3-norm-ReLU-conv3x3 plus a shortcut (1x1 conv when the shape
    changes). up: upsample before conv1 and in the shortcut; down: mean pool after conv2 and in the shortcut (a 1x1
    conv commutes with mean pooling, so ConvMeanPool and MeanPoolConv shortcuts are the same function)."""

    takes_labels = True

    def __init__(
        self, cin: int, cout: int, resample: Optional[str], norm: Optional[Norm], num_classes: int = 0, bias1=True
    ) -> None:
        super().__init__()
        mid = cin if resample == "down" else cout
        self.up = Upsample() if resample == "up" else nn.Identity()
        self.down = MeanPool() if resample == "down" else nn.Identity()
        self.norm1, self.norm2 = (norm(c, num_classes) if norm else nn.Identity() for c in (cin, mid))
        self.conv1, self.conv2 = conv3x3(cin, mid, bias=bias1), conv3x3(mid, cout)
        self.shortcut = nn.Identity() if cin == cout and resample is None else conv1x1(cin, cout)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.conv1(self.up(F.relu(_norm(self.norm1, x, y))))
        h = self.down(self.conv2(F.relu(_norm(self.norm2, h, y))))
        return self.shortcut(self.down(self.up(x))) + h


def _norm(layer: nn.Module, x: Tensor, y: Optional[Tensor]) -> Tensor:
    return layer(x, y) if takes_labels(layer) else layer(x)


class OptimizedBlock(nn.Module):
    """The critic's first block (OptimizedResBlockDisc1): conv3x3-ReLU-conv3x3-meanpool, shortcut meanpool-conv1x1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(cin, cout), nn.ReLU(), conv3x3(cout, cout), MeanPool())
        self.shortcut = nn.Sequential(MeanPool(), conv1x1(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.body(x)


class SpatialMean(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def resnet_generator(
    z_dim: int, widths: list[int], channels: int, num_classes: int, output_init: str, bias1: bool = True
) -> ConditionalGenerator:
    """Linear to 4x4x widths[0], one 'up' block per further width (class-conditional BN when conditional), BN,
    ReLU, conv3x3 to the image channels, tanh."""
    blocks = [ResBlock(a, b, "up", batch_norm, num_classes, bias1) for a, b in pairwise(widths)]
    body = LabelledSequential(
        init_linear(nn.Linear(z_dim, 4 * 4 * widths[0])), nn.Unflatten(1, (widths[0], 4, 4)), *blocks,
        nn.BatchNorm2d(widths[-1]), nn.ReLU(), conv3x3(widths[-1], channels, output_init), nn.Tanh(),
    )  # fmt: skip
    size = 4 * 2 ** len(blocks)
    return ConditionalGenerator(body, (channels, size, size), z_dim, num_classes)


def resnet32_pair(
    z_dim: int, width: int, channels: int, size: int, num_classes: int = 0
) -> tuple[ConditionalGenerator, ClassifierCritic]:
    """gan_cifar_resnet.py: G 128 channels, 3 up blocks with batch norm; critic without any normalisation, global
    mean pool after a ReLU, Linear(128 -> 1) (and Linear(128 -> K) for AC-GAN)."""
    w = width or 128
    generator = resnet_generator(z_dim, [w] * 4, channels, num_classes, output_init="glorot")
    features = nn.Sequential(
        OptimizedBlock(channels, w), ResBlock(w, w, "down", None), ResBlock(w, w, None, None),
        ResBlock(w, w, None, None), nn.ReLU(), SpatialMean(),
    )  # fmt: skip
    return generator, ClassifierCritic(features, w, num_classes)


def resnet64_pair(
    z_dim: int, width: int, channels: int, size: int, num_classes: int = 0
) -> tuple[ConditionalGenerator, ClassifierCritic]:
    """gan_64x64.py GoodGenerator / GoodDiscriminator (dim 64): G 4x4x8d, up blocks 8d-8d-4d-2d-d with batch norm;
    critic conv3x3 to d, down blocks d-2d-4d-8d-8d with layer norm over (C, H, W), flatten, Linear(4*4*8d -> 1)."""
    d = width or 64
    generator = resnet_generator(z_dim, [8 * d, 8 * d, 4 * d, 2 * d, d], channels, num_classes, "he", bias1=False)
    widths = [d, 2 * d, 4 * d, 8 * d, 8 * d]
    blocks = [ResBlock(a, b, "down", layer_norm, bias1=False) for a, b in pairwise(widths)]
    features = nn.Sequential(conv3x3(channels, d, "glorot"), *blocks, nn.Flatten())
    return generator, ClassifierCritic(features, 4 * 4 * 8 * d, num_classes)


def resnet128_pair(
    z_dim: int, width: int, channels: int, size: int, num_classes: int = 0
) -> tuple[ConditionalGenerator, ClassifierCritic]:
    """resnet64's block pattern one level deeper (not in the paper): G 4x4x8d, up blocks 8d-8d-8d-4d-2d-d (five, to
    128x128) with batch norm; critic conv3x3 to d, down blocks d-2d-4d-8d-8d-8d with layer norm, Linear(4*4*8d -> 1)."""
    d = width or 64
    generator = resnet_generator(
        z_dim, [8 * d, 8 * d, 8 * d, 4 * d, 2 * d, d], channels, num_classes, "he", bias1=False
    )
    widths = [d, 2 * d, 4 * d, 8 * d, 8 * d, 8 * d]
    blocks = [ResBlock(a, b, "down", layer_norm, bias1=False) for a, b in pairwise(widths)]
    features = nn.Sequential(conv3x3(channels, d, "glorot"), *blocks, nn.Flatten())
    return generator, ClassifierCritic(features, 4 * 4 * 8 * d, num_classes)
