"""Building blocks of the paper presets: per-sample layer norm, class-conditional batch norm, tflib init, AC head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of each sample with a per-channel scale and offset, as tflib's Layernorm([1, 2, 3]).

    Statistics are per sample, so the critic's outputs stay independent across the batch (the penalty needs that).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ClassBatchNorm2d(nn.Module):
    """Batch norm whose scale and offset are looked up per class (tflib's cond_batchnorm): generators only."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.weight = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.weight.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.norm(x) * self.weight(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def batch_norm(channels: int, num_classes: int = 0) -> nn.Module:
    """Generator batch norm: class-conditional when `num_classes` > 0."""
    return ClassBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)


def layer_norm(channels: int, num_classes: int = 0) -> LayerNorm2d:
    """Critic normalisation: per-sample layer norm; never class-conditional (the AC-GAN critic takes no labels)."""
    return LayerNorm2d(channels)


def takes_labels(module: nn.Module) -> bool:
    return getattr(module, "takes_labels", False) or isinstance(module, ClassBatchNorm2d)


class LabelledSequential(nn.Sequential):
    """nn.Sequential that hands the class labels `y` to the layers that take them (conditional norms, blocks)."""

    takes_labels = True

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, y) if takes_labels(layer) else layer(x)
        return x


class ConditionalGenerator(nn.Module):
    """z (N, z_dim) [and labels y (N,)] -> body -> image (N, C, H, W); `num_classes` 0 means unconditional."""

    def __init__(self, body: LabelledSequential, out_shape: tuple[int, ...], z_dim: int, num_classes: int = 0):
        super().__init__()
        self.body, self.out_shape, self.z_dim, self.num_classes = body, tuple(out_shape), z_dim, num_classes

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes and y is None:
            raise ValueError(f"this generator is class-conditional ({self.num_classes} classes): call it as G(z, y)")
        return self.body(z, y if self.num_classes else None).reshape(z.shape[0], *self.out_shape)


class ClassifierCritic(nn.Module):
    """x -> features (N, F) -> an unbounded score (N,); with `num_classes` also AC-GAN class logits (N, K).

    `forward(x)` returns the score only, so the penalty and fp32 forward need no change; the AC-GAN pass calls
    `forward(x, with_classes=True)` -> (score, logits) through the (DDP-)prepared module (logits None without a
    class head).
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int = 0, init: str = "glorot") -> None:
        super().__init__()
        self.features, self.num_classes = features, num_classes
        self.head = init_linear(nn.Linear(feature_dim, 1), init)
        self.classifier = init_linear(nn.Linear(feature_dim, num_classes), init) if num_classes else None

    def forward(self, x: Tensor, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        h = self.features(x)
        score = self.head(h).reshape(x.shape[0])
        if not with_classes:
            return score
        return score, None if self.classifier is None else self.classifier(h)


def _uniform_(weight: Tensor, std: float) -> None:
    """tflib's uniform init: U[-std*sqrt(3), std*sqrt(3)], i.e. standard deviation `std`."""
    bound = std * math.sqrt(3)
    nn.init.uniform_(weight, -bound, bound)


def init_conv(conv: nn.Conv2d | nn.ConvTranspose2d, init: str = "he") -> nn.Module:
    """tflib Conv2D init. he: std sqrt(4 / (fan_in + fan_out)); glorot: sqrt(2 / ...); dcgan: std 0.02. Bias 0."""
    k, stride = conv.kernel_size[0], conv.stride[0]
    fan_in, fan_out = conv.in_channels * k * k, conv.out_channels * k * k / stride**2
    std = {"he": math.sqrt(4 / (fan_in + fan_out)), "glorot": math.sqrt(2 / (fan_in + fan_out)), "dcgan": 0.02}[init]
    _uniform_(conv.weight, std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def init_linear(linear: nn.Linear, init: str = "glorot") -> nn.Linear:
    """tflib Linear init: glorot std sqrt(2 / (in + out)); dcgan std 0.02; bias 0."""
    std = 0.02 if init == "dcgan" else math.sqrt(2 / (linear.in_features + linear.out_features))
    _uniform_(linear.weight, std)
    nn.init.zeros_(linear.bias)
    return linear


def conv3x3(cin: int, cout: int, init: str = "he", bias: bool = True) -> nn.Module:
    return init_conv(nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), init)


def conv1x1(cin: int, cout: int) -> nn.Module:
    """The shortcut convolutions (he_init=False in the paper's code)."""
    return init_conv(nn.Conv2d(cin, cout, 1), "glorot")


def class_rows(n: int, num_classes: int) -> Tensor:
    """Labels for a grid of n images laid out sqrt(n) per row (trainer.run.pictures.save_grid): one class per row."""
    per_row = max(1, int(math.sqrt(n)))
    return (torch.arange(n) // per_row) % num_classes
