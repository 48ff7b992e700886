"""The objective: GAN losses, the fp32 gradient penalty, and one registry of losses, each built into an Objective.

A new loss is one entry in LOSSES (its critic and generator terms, whether it takes a penalty or clips, its paper's
optimizer); everything else (config validation, DeepSpeed's checks, the step) reads that entry.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.core.clock import Clock

SQRT_EPS = 1e-12  # inside the sqrt of the gradient norm, so a zero gradient gives norm ~0, not a NaN derivative


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """x_hat = eps * real + (1 - eps) * fake with one eps per sample, broadcast over all non-batch dims."""
    eps = eps.reshape(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return eps * real + (1 - eps) * fake


def input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """d(sum D(x))/dx by autograd, its graph kept (create_graph) so that the loss's backward is a double backward."""
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad


def functional_input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The same gradient by torch.func: inside torch.compile the traced graph stays first order (aot_autograd refuses
    autograd.grad with create_graph there), and the loss's backward differentiates it like any other op."""
    return torch.func.grad(lambda inputs: critic(inputs).sum())(x)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    eps: Optional[Tensor] = None,
    one_sided: bool = False,
    gradient: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor] = input_gradient,
) -> tuple[Tensor, Tensor]:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] (one-sided: only norms above 1 pay), and the per-sample norms (detached).

    All of it (interpolation, forward, input gradient, norm) runs in float32 with autocast off, also when the caller
    wraps the step in its own autocast; pass an fp32 forward (trainer.accel.runtime.fp32_forward) for a prepared
    model, whose own forward Accelerate has wrapped in autocast. `gradient` keeps the graph (input_gradient, or
    functional_input_gradient inside torch.compile) so that backpropagating the penalty reaches the critic's
    parameters.
    """
    with torch.autocast(device_type=real.device.type, enabled=False):
        real, fake = real.detach().float(), fake.detach().float()
        if eps is None:
            eps = torch.rand(real.shape[0], device=real.device)
        # Samples do not interact in a critic without batch statistics, so d(sum)/dx_i = dD(x_i)/dx_i.
        grad = gradient(critic, interpolate(real, fake, eps))
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


def acgan_critic_loss(logits_real: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the critic's class head on real images (the paper's AC-GAN code leaves the fakes out)."""
    return F.cross_entropy(logits_real.float(), labels)


def acgan_generator_loss(logits_fake: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the critic's class head on generated images against the labels they were generated for."""
    return F.cross_entropy(logits_fake.float(), labels)


def class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of samples whose arg-max class is the label (the paper logs it for real and fake batches)."""
    return (logits.argmax(dim=1) == labels).float().mean()


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


@dataclass
class CriticBatch:
    """What one critic step's loss sees: the inputs (fakes detached) and the critic's outputs on them."""

    real: Tensor
    fake: Tensor
    eps: Tensor  # one interpolation coefficient per sample
    labels: Optional[Tensor]  # class labels of the real batch (the fakes were generated for them); None: unconditional
    d_real: Tensor  # float32 scores (N,)
    d_fake: Tensor
    logits_real: Optional[Tensor] = None  # AC-GAN class logits (N, K); None: unconditional
    logits_fake: Optional[Tensor] = None


Stats = dict[str, Tensor]  # name -> scalar (logged as its mean) or vector (mean, std and max)


@dataclass
class Penalty:
    """weight * E[(||grad D(x_hat)||_2 - 1)^2] on fp32 interpolates, through `forward` (the critic in float32).

    `every` > 1 is StyleGAN2's lazy regularisation: only every k-th critic step of the run pays, with weight
    lambda * k, so the expected weight per step is unchanged; which steps pay is read off the run's `clock` (critic
    steps done, advanced by the step alone, set on resume), so a resumed run keeps the schedule. `fraction` < 1 uses
    the first share of the (shuffled) batch. Both change the math; the paper is every=1, fraction=1.
    """

    forward: Callable[[Tensor], Tensor]
    weight: float
    clock: Clock
    one_sided: bool = False
    every: int = 1
    fraction: float = 1.0
    around: Callable[[], ContextManager] = nullcontext  # e.g. a phase timer around the penalty's own work
    gradient: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor] = input_gradient  # see gradient_penalty

    def __call__(self, b: CriticBatch) -> tuple[Optional[Tensor], Stats]:
        return self.term(b) if self.due() else (None, {})

    def due(self) -> bool:
        """Whether the coming critic step pays the penalty (every `every`-th of the run)."""
        return self.clock.critic % self.every == 0

    def term(self, b: CriticBatch) -> tuple[Tensor, Stats]:
        """The penalty term of a step that pays."""
        rows = max(1, round(self.fraction * b.real.shape[0]))
        with self.around():
            real, fake, eps = b.real[:rows], b.fake[:rows], b.eps[:rows]
            penalty, norms = gradient_penalty(
                self.forward, real, fake, eps, one_sided=self.one_sided, gradient=self.gradient
            )
        return self.weight * self.every * penalty, {"penalty": penalty, "grad_norm": norms}

    def traceable(self) -> Penalty:
        """The same penalty for torch.compile: its input gradient by torch.func (a first-order graph that aot_autograd
        can trace) and no phase timer inside the graph."""
        return replace(self, gradient=functional_input_gradient, around=nullcontext)


def acgan_critic_term(scale: float) -> Callable[[CriticBatch], tuple[Tensor, Stats]]:
    def term(b: CriticBatch) -> tuple[Tensor, Stats]:
        assert b.logits_real is not None and b.logits_fake is not None and b.labels is not None
        accuracy = {"acc_real": class_accuracy(b.logits_real, b.labels)}
        accuracy["acc_fake"] = class_accuracy(b.logits_fake, b.labels)
        return scale * acgan_critic_loss(b.logits_real, b.labels), accuracy

    return term


def drift_term(weight: float) -> Callable[[CriticBatch], tuple[Tensor, Stats]]:
    """ProGAN's drift eps * E[D(real)^2], which keeps the critic's scores near 0."""
    return lambda b: (weight * b.d_real.pow(2).mean(), {})


@dataclass
class Objective:
    """The whole critic loss (the loss's own terms, then AC-GAN, penalty, drift) and the generator loss of one run,
    built once (trainer.core.build) from loss.*; `after_critic_update` is the loss's own post-update work."""

    spec: LossSpec
    critic_terms: list[Callable[[CriticBatch], tuple[Optional[Tensor], Stats]]] = field(default_factory=list)
    acgan_scale_g: Optional[float] = None  # conditional: the generator also pays the class head's cross-entropy
    clip: float = 0.0  # > 0: weights clipped to [-clip, clip] after every critic update (spec.clip)

    def critic_loss(self, b: CriticBatch) -> tuple[Tensor, Stats]:
        loss, stats = self.spec.critic(b.d_real, b.d_fake), {}
        for term in self.critic_terms:
            value, reported = term(b)
            loss = loss if value is None else loss + value
            stats.update(reported)
        return loss, stats

    def generator_loss(self, d_fake: Tensor, logits: Optional[Tensor], labels: Optional[Tensor]) -> Tensor:
        loss = self.spec.generator(d_fake)
        if self.acgan_scale_g is not None:
            assert logits is not None and labels is not None
            loss = loss + self.acgan_scale_g * acgan_generator_loss(logits, labels)
        return loss

    def with_terms(self, terms: list[Callable[[CriticBatch], tuple[Optional[Tensor], Stats]]]) -> Objective:
        """The same objective with other critic terms (trainer.core.compiled: with the penalty traced, or without)."""
        return replace(self, critic_terms=list(terms))

    def after_critic_update(self, critic: nn.Module) -> None:
        if self.clip:
            clip_weights(critic, self.clip)
