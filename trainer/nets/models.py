"""Generator/critic presets: networks know nothing of losses, devices or distribution; no critic has batch stats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn

from trainer.nets.layers import (
    ClassifierCritic,
    ConditionalGenerator,
    LabelledSequential,
    LayerNorm2d,
    batch_norm,
    init_conv,
    init_linear,
)
from trainer.nets.resnet import resnet32_pair, resnet64_pair, resnet128_pair


class Generator(nn.Module):
    """z (N, z_dim) -> body -> reshaped to `out_shape` (image (C, H, W) or a 2-D point); unconditional: no labels.

    Every generator is called as G(z, labels) and every critic as D(x) or D(x, with_classes=True) -> (score, logits),
    conditional or not (labels and logits None here), so the training step has one call for both.
    """

    def __init__(self, body: nn.Module, out_shape: tuple[int, ...], z_dim: int) -> None:
        super().__init__()
        self.body, self.out_shape, self.z_dim = body, tuple(out_shape), z_dim

    def forward(self, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.body(z).reshape(z.shape[0], *self.out_shape)


class Critic(nn.Module):
    """x -> one unbounded real number per sample, shape (N,); with_classes=True: (score, None), no class head."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor, with_classes: bool = False) -> Tensor | tuple[Tensor, None]:
        score = self.body(x).reshape(x.shape[0])
        return (score, None) if with_classes else score


def mlp_pair(z_dim: int, width: int, channels: int, size: int) -> tuple[Generator, Critic]:
    """The seed-000 MNIST MLPs (z -> 128 -> 256 -> pixels, LeakyReLU 0.2, Tanh), with a linear critic output."""
    w = width or 128
    pixels = channels * size * size
    gen = nn.Sequential(
        nn.Linear(z_dim, w),
        nn.LeakyReLU(0.2),
        nn.Linear(w, 2 * w),
        nn.LeakyReLU(0.2),
        nn.Linear(2 * w, pixels),
        nn.Tanh(),
    )
    critic = nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, 2 * w),
        nn.LeakyReLU(0.2),
        nn.Linear(2 * w, w),
        nn.LeakyReLU(0.2),
        nn.Linear(w, 1),
    )
    return Generator(gen, (channels, size, size), z_dim), Critic(critic)


def dcgan28_pair(z_dim: int, width: int, channels: int, size: int) -> tuple[Generator, Critic]:
    """The seed-003 DCGAN pair for 28x28 (5x5 kernels); the critic without dropout (and never batch norm)."""
    w = width or 64
    gen = nn.Sequential(
        nn.Linear(z_dim, 7 * 7 * 4 * w, bias=False), nn.BatchNorm1d(7 * 7 * 4 * w), nn.LeakyReLU(0.2),
        nn.Unflatten(1, (4 * w, 7, 7)),
        nn.ConvTranspose2d(4 * w, 2 * w, 5, 1, 2, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(2 * w, w, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(w, channels, 5, 2, 2, output_padding=1), nn.Tanh(),
    )  # fmt: skip
    critic = nn.Sequential(
        nn.Conv2d(channels, w, 5, 2, 2), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 5, 2, 2), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(2 * w * 7 * 7, 1),
    )  # fmt: skip
    return Generator(gen, (channels, size, size), z_dim), Critic(critic)


def conv_small_pair(z_dim: int, width: int, channels: int, size: int) -> tuple[Generator, Critic]:
    """A small DCGAN-style pair: 4x4 seed doubled log2(size/4) times; critic strided convs, LeakyReLU, linear head."""
    w, ups = width or 64, int(math.log2(size // 4))
    gen: list[nn.Module] = [nn.Linear(z_dim, 4 * 4 * 2 * w), nn.Unflatten(1, (2 * w, 4, 4)), nn.ReLU()]
    cin = 2 * w
    for i in range(ups):
        cout = max(w // 2 ** max(i - 1, 0), 16)
        gen += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    gen += [nn.Conv2d(cin, channels, 3, 1, 1), nn.Tanh()]
    critic: list[nn.Module] = [nn.Conv2d(channels, cin, 3, 1, 1), nn.LeakyReLU(0.2)]
    for i in reversed(range(ups)):
        cout = max(w // 2 ** max(i - 1, 0), 16) if i else 2 * w
        critic += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
        cin = cout
    critic += [nn.Flatten(), nn.Linear(cin * 4 * 4, 1)]
    return Generator(nn.Sequential(*gen), (channels, size, size), z_dim), Critic(nn.Sequential(*critic))


def toy_pair(z_dim: int, width: int, channels: int, size: int) -> tuple[Generator, Critic]:
    """The paper's toy MLPs (gan_toy.py): 3 hidden ReLU layers of 512, 2-D output; critic 2 -> 512^3 -> 1."""
    w = width or 512

    def mlp(n_in: int, n_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(n_in, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, n_out)
        )

    return Generator(mlp(z_dim, 2), (2,), z_dim), Critic(mlp(2, 1))


def dcgan64_pair(
    z_dim: int, width: int, channels: int, size: int, num_classes: int = 0
) -> tuple[ConditionalGenerator, ClassifierCritic]:
    """gan_64x64.py's DCGAN pair (dim 64, 5x5 kernels, init std 0.02) with layer norm in place of the critic's BN."""
    d = width or 64

    def deconv(cin: int, cout: int) -> nn.Module:
        return init_conv(nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1), "dcgan")

    def conv(cin: int, cout: int) -> nn.Module:
        return init_conv(nn.Conv2d(cin, cout, 5, 2, 2), "dcgan")

    gen: list[nn.Module] = [init_linear(nn.Linear(z_dim, 4 * 4 * 8 * d), "dcgan"), nn.Unflatten(1, (8 * d, 4, 4))]
    for cin, cout in ((8 * d, 4 * d), (4 * d, 2 * d), (2 * d, d)):
        gen += [batch_norm(cin, num_classes), nn.ReLU(), deconv(cin, cout)]
    gen += [batch_norm(d, num_classes), nn.ReLU(), deconv(d, channels), nn.Tanh()]
    critic: list[nn.Module] = [conv(channels, d), nn.LeakyReLU(0.2)]
    for cin, cout in ((d, 2 * d), (2 * d, 4 * d), (4 * d, 8 * d)):
        critic += [conv(cin, cout), LayerNorm2d(cout), nn.LeakyReLU(0.2)]
    critic.append(nn.Flatten())
    generator = ConditionalGenerator(LabelledSequential(*gen), (channels, 64, 64), z_dim, num_classes)
    return generator, ClassifierCritic(nn.Sequential(*critic), 4 * 4 * 8 * d, num_classes, init="dcgan")


@dataclass(frozen=True)
class Preset:
    build: Callable[..., tuple[nn.Module, nn.Module]]  # (z_dim, width, channels, size[, num_classes])
    is_toy: bool  # works on 2-D points instead of images
    image_sizes: tuple[int, ...]  # image sides the generator can produce
    conditional: bool = False  # accepts num_classes > 0: generator(z, y) and an AC-GAN critic head
    channels_last_cpu: bool = False  # speed.channels_last's default on CPU (where NHWC measured faster)


PRESETS: dict[str, Preset] = {
    "mlp": Preset(mlp_pair, False, (8, 16, 28, 32, 64)),
    "dcgan28": Preset(dcgan28_pair, False, (28,)),
    "conv-small": Preset(conv_small_pair, False, (8, 16, 32, 64), channels_last_cpu=True),  # README: Performance
    "toy": Preset(toy_pair, True, ()),
    # The paper's presets (Gulrajani et al. 2017, igul222/improved_wgan_training):
    "resnet32": Preset(resnet32_pair, False, (32,), conditional=True),  # CIFAR-10 ResNet (Inception scores, Table 3)
    "resnet64": Preset(resnet64_pair, False, (64,), conditional=True),  # gan_64x64.py's Good* ResNet pair
    "dcgan64": Preset(dcgan64_pair, False, (64,), conditional=True),  # DCGAN row of the LSUN comparison (Figure 2)
    "resnet128": Preset(resnet128_pair, False, (128,)),  # resnet64 one level deeper, for image folders (not the paper)
}


def build_models(
    name: str, z_dim: int, width: int, channels: int, size: int, num_classes: int = 0
) -> tuple[nn.Module, nn.Module]:
    """The (generator, critic) pair of preset `name`; `width` 0 means the preset's default.

    `num_classes` > 0 builds the class-conditional pair (presets with `conditional`): generator(z, y) and a critic
    whose forward(x, with_classes=True) also returns AC-GAN class logits (N, num_classes).
    """
    preset = PRESETS[name]
    if not num_classes:
        return preset.build(z_dim, width, channels, size)
    if not preset.conditional:
        conditional = ", ".join(n for n, p in PRESETS.items() if p.conditional)
        raise ValueError(f"preset {name} has no class-conditional form; presets that do: {conditional}")
    return preset.build(z_dim, width, channels, size, num_classes=num_classes)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
