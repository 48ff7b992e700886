"""GAN losses as small functions of critic outputs; the gradient penalty as one function of a critic and two batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT_EPS = 1e-12  # inside the sqrt of the gradient norm, so a zero gradient gives norm ~0, not a NaN derivative


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """x_hat = eps * real + (1 - eps) * fake with one eps per sample, broadcast over all non-batch dims."""
    eps = eps.reshape(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return eps * real + (1 - eps) * fake


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    eps: Optional[Tensor] = None,
    one_sided: bool = False,
) -> tuple[Tensor, Tensor]:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] (one-sided: only norms above 1 pay), and the per-sample norms (detached).

    `critic` is called once on the interpolates; pass an fp32 forward to keep the penalty in float32. The graph is
    kept (create_graph) so that backpropagating the penalty reaches the critic's parameters.
    """
    real, fake = real.detach().float(), fake.detach().float()
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    x_hat = interpolate(real, fake, eps).requires_grad_(True)
    out = critic(x_hat)
    # Samples do not interact in a critic without batch statistics, so d(sum)/dx_i = dD(x_i)/dx_i.
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + SQRT_EPS)
    gap = norm - 1
    if one_sided:
        gap = gap.clamp(min=0)
    return gap.pow(2).mean(), norm.detach()


def wasserstein_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[D(fake)] - E[D(real)]: minimising it maximises the critic's Wasserstein estimate."""
    return d_fake.mean() - d_real.mean()


def wasserstein_generator_loss(d_fake: Tensor) -> Tensor:
    return -d_fake.mean()


def nonsaturating_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The standard GAN discriminator loss on logits: -log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def nonsaturating_generator_loss(d_fake: Tensor) -> Tensor:
    """-log sigmoid(D(G(z))): the non-saturating generator loss of Goodfellow et al. (DCGAN baseline)."""
    return F.softplus(-d_fake).mean()


@torch.no_grad()
def clip_weights(critic: nn.Module, bound: float) -> None:
    """Original WGAN's Lipschitz constraint: every critic parameter clamped to [-bound, bound]."""
    for param in critic.parameters():
        param.clamp_(-bound, bound)


@dataclass(frozen=True)
class LossSpec:
    critic: Callable[[Tensor, Tensor], Tensor]
    generator: Callable[[Tensor], Tensor]
    penalty: Optional[str]  # None, "two-sided" or "one-sided"
    clip: bool  # weight clipping after every critic step
    optimizer: str  # paper default optimizer for this loss
    lr: float  # paper default learning rate (critic and generator)
    betas: tuple[float, float]  # paper default Adam betas


LOSSES: dict[str, LossSpec] = {
    # Gulrajani et al. 2017, Algorithm 1.
    "wgan-gp": LossSpec(
        wasserstein_critic_loss, wasserstein_generator_loss, "two-sided", False, "adam", 1e-4, (0.0, 0.9)
    ),
    # Petzka et al. 2018: penalise only norms above 1.
    "wgan-lp": LossSpec(
        wasserstein_critic_loss, wasserstein_generator_loss, "one-sided", False, "adam", 1e-4, (0.0, 0.9)
    ),
    # Arjovsky et al. 2017: weight clipping with RMSprop 5e-5.
    "wgan-clip": LossSpec(wasserstein_critic_loss, wasserstein_generator_loss, None, True, "rmsprop", 5e-5, (0.0, 0.9)),
    # Radford et al. 2016 (DCGAN) with the non-saturating loss: Adam 2e-4, beta1 0.5.
    "gan": LossSpec(nonsaturating_critic_loss, nonsaturating_generator_loss, None, False, "adam", 2e-4, (0.5, 0.999)),
}


# AC-GAN conditioning as in the paper's CIFAR-10 code (gan_cifar_resnet.py, ACGAN_SCALE and ACGAN_SCALE_G).
ACGAN_SCALE = 1.0  # weight of the critic's cross-entropy on the real batch's labels
ACGAN_SCALE_G = 0.1  # weight of the generator's cross-entropy on the labels it was asked for


def acgan_critic_loss(
    logits_real: Tensor, labels: Tensor, logits_fake: Optional[Tensor] = None, fake_labels: Optional[Tensor] = None
) -> Tensor:
    """Cross-entropy of the critic's class head on real images (the paper's code); with `logits_fake`, plus the
    same on the fakes (Odena et al.'s original AC-GAN, which the paper's code leaves out)."""
    loss = F.cross_entropy(logits_real.float(), labels)
    if logits_fake is not None:
        loss = loss + F.cross_entropy(logits_fake.float(), labels if fake_labels is None else fake_labels)
    return loss


def acgan_generator_loss(logits_fake: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the critic's class head on generated images against the labels they were generated for."""
    return F.cross_entropy(logits_fake.float(), labels)


def class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of samples whose arg-max class is the label (the paper logs it for real and fake batches)."""
    return (logits.argmax(dim=1) == labels).float().mean()
