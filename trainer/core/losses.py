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
    at: str = "interpolates",
    centre: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """E[(||grad_x D(x)||_2 - centre)^2] (one-sided: only norms above the centre pay), and the per-sample norms
    (detached). x is the interpolates x_hat (WGAN-GP: centre 1), or the real or the fake batch itself (`at`; the
    zero-centred R1 and R2 of Mescheder et al. 2018: centre 0, so the value is E||grad D(x)||^2).

    All of it (interpolation, forward, input gradient, norm) runs in float32 with autocast off, also when the caller
    wraps the step in its own autocast; pass an fp32 forward (trainer.accel.runtime.fp32_forward) for a prepared
    model, whose own forward Accelerate has wrapped in autocast. `gradient` keeps the graph (input_gradient, or
    functional_input_gradient inside torch.compile) so that backpropagating the penalty reaches the critic's
    parameters.
    """
    with torch.autocast(device_type=real.device.type, enabled=False):
        real, fake = real.detach().float(), fake.detach().float()
        if at == "interpolates":
            if eps is None:
                eps = torch.rand(real.shape[0], device=real.device)
            x = interpolate(real, fake, eps)
        else:
            x = real if at == "real" else fake
        # Samples do not interact in a critic without batch statistics, so d(sum)/dx_i = dD(x_i)/dx_i.
        grad = gradient(critic, x)
        norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + SQRT_EPS)
        gap = norm - centre
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


def relativistic_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """RpGAN (Jolicoeur-Martineau 2019; R3GAN, Huang et al. 2024): E[softplus(D(fake) - D(real))] on paired samples."""
    return F.softplus(d_fake - d_real).mean()


def relativistic_generator_loss(d_fake: Tensor, d_real: Tensor) -> Tensor:
    """RpGAN's generator side: E[softplus(D(real) - D(fake))] on a real batch paired with the fakes."""
    return F.softplus(d_real - d_fake).mean()


def hinge_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The hinge loss (Lim & Ye 2017; SNGAN, SAGAN): E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


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
    generator: Callable[..., Tensor]  # (d_fake) -> loss; relativistic losses: (d_fake, d_real)
    penalty: Optional[str]  # None, "two-sided", "one-sided" (at x_hat, centre 1), "r1", "r1r2" (zero-centred)
    clip: bool  # weight clipping after every critic step
    optimizer: str  # paper default optimizer for this loss
    lr: float  # paper default learning rate (critic and generator)
    betas: tuple[float, float]  # paper default Adam betas
    relativistic: bool = False  # the generator step pairs its fakes with a real batch (RpGAN)
    gamma: float = 0.0  # paper default gamma of the zero-centred penalties (loss.gamma); 0 = no such penalty

    @property
    def zero_centred(self) -> bool:
        return self.penalty in ("r1", "r1r2")


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
    # Mescheder et al. 2018: the non-saturating loss with R1 (gamma/2 E||grad D(real)||^2), gamma 10, Adam 1e-4
    # with betas (0, 0.99) as their code's; StyleGAN2's lazy form by loss.lazy_penalty (the weight scaled by it).
    "gan-r1": LossSpec(
        nonsaturating_critic_loss, nonsaturating_generator_loss, "r1", False, "adam", 1e-4, (0.0, 0.99), gamma=10.0
    ),
    # Huang et al. 2024 (R3GAN): RpGAN + R1 + R2, Adam 2e-4 with betas (0, 0.99), gamma 0.05 (their CIFAR-10 value;
    # loss.gamma_final decays it by a cosine over train.steps, as their schedule does).
    "r3gan": LossSpec(
        relativistic_critic_loss,
        relativistic_generator_loss,
        "r1r2",
        False,
        "adam",
        2e-4,
        (0.0, 0.99),
        relativistic=True,
        gamma=0.05,
    ),  # fmt: skip
    # Lim & Ye 2017, Miyato et al. 2018 (SNGAN): the hinge loss with Adam 2e-4, betas (0, 0.9); no penalty.
    "hinge": LossSpec(hinge_critic_loss, wasserstein_generator_loss, None, False, "adam", 2e-4, (0.0, 0.9)),
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
    at: str = "interpolates"  # interpolates (WGAN-GP) | real (R1) | fake (R2)
    centre: float = 1.0  # the gradient norm it pulls towards: 1 (WGAN-GP), 0 (R1, R2)
    name: str = "penalty"  # its statistic (penalty, r1, r2); its norms are grad_norm, grad_norm_real, grad_norm_fake
    schedule: Optional[Callable[[int], float]] = None  # a factor on the weight by generator step (R3GAN's decay)

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
                self.forward, real, fake, eps, one_sided=self.one_sided, gradient=self.gradient, at=self.at,
                centre=self.centre,
            )  # fmt: skip
        weight = self.weight * self.every * (self.schedule(self.clock.step) if self.schedule else 1.0)
        norm_name = "grad_norm" if self.at == "interpolates" else f"grad_norm_{self.at}"
        return weight * penalty, {self.name: penalty, norm_name: norms}

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

    def generator_loss(
        self, d_fake: Tensor, logits: Optional[Tensor], labels: Optional[Tensor], *d_real: Tensor
    ) -> Tensor:
        """The loss's generator term (a relativistic one also takes the paired real scores), then AC-GAN's."""
        loss = self.spec.generator(d_fake, *d_real)
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
