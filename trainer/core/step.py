"""One critic step and one generator step of Algorithm 1 (Gulrajani et al. 2017), on objects built once.

The steps take their inputs and return their statistics; the two losses (eager compositions below, or compiled ones:
trainer.core.compiled), which critic forward (one joint pass or two), which backward (DDP, DeepSpeed, parameters
only) and the fp32 penalty are objects the builder chose (trainer.core.build).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from trainer.core.augment import identity
from trainer.core.clock import Clock
from trainer.core.guard import NonFiniteGuard
from trainer.core.losses import CriticBatch, Objective, Stats

Scores = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]  # D(real), D(fake) in float32, their class logits
Augment = Callable[[Tensor], Tensor]
CriticLoss = Callable[[Tensor, Tensor, Optional[Tensor], Tensor], tuple[Tensor, Stats]]  # (real, fake, labels, eps)
GeneratorLoss = Callable[..., Tensor]  # (z, labels, augment), relativistic: (z, labels, augment, real)


@dataclass
class Update:
    """One optimizer's update from a loss: zero the gradients, backward, a guarded step, then `after` (clipping)."""

    optimizer: torch.optim.Optimizer
    module: nn.Module  # whose gradients the guard checks
    backward: Callable[[Tensor], None]
    guard: NonFiniteGuard
    after: Callable[[], None] = lambda: None

    def __call__(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=loss.device.type, enabled=False):  # backward ops keep their forward dtypes,
            self.backward(loss)  # so the penalty's double backward stays fp32 inside a caller's own autocast
        self.guard.step(self.optimizer, self.module)
        self.after()


@dataclass
class StepParts:
    """The networks, their losses and updates that one training run steps (built by trainer.core.build).

    `generator` is the prepared (DDP) generator; `generator_raw` the module inside it, for fakes without gradients;
    `critic` the raw critic, frozen in the generator step; `critic_loss` and `generator_loss` the whole losses of a
    batch (the compositions below, or compiled: trainer.core.compiled); `objective` the terms they add up; `clock` the
    run's one step counter, which only the steps below advance.
    """

    generator: nn.Module
    generator_raw: nn.Module
    critic: nn.Module
    critic_loss: CriticLoss
    generator_loss: GeneratorLoss
    objective: Objective
    update_critic: Update
    update_generator: Update
    clock: Clock
    augment: Augment = identity  # DiffAugment on every critic input (data.augment); default none


def critic_step(parts: StepParts, real: Tensor, labels: Optional[Tensor], z: Tensor, eps: Tensor) -> Stats:
    """Algorithm 1, lines 3-9: one critic update on a real batch, fakes G(z) and one eps per sample."""
    with torch.no_grad():  # conditional: the fakes take the real batch's labels, as the paper's AC-GAN code
        fake = parts.generator_raw(z, labels).float()
    real, fake = parts.augment(real), parts.augment(fake)  # the critic sees both augmented; x_hat mixes them
    loss, stats = parts.critic_loss(real, fake, labels, eps)  # E[D(fake)] - E[D(real)] + lambda * GP (+ options)
    parts.update_critic(loss)
    parts.clock.critic += 1
    return {**stats, "loss_d": loss}


def generator_step(parts: StepParts, z: Tensor, labels: Optional[Tensor], *real: Tensor) -> Stats:
    """Algorithm 1, lines 11-12: one generator update through the critic, whose weights take no gradient. A
    relativistic loss's draws add the real batch its fakes are paired with."""
    with frozen(parts.critic):
        loss = parts.generator_loss(z, labels, parts.augment, *real)  # -E[D(G(z))], G(z) augmented as D's inputs
        parts.update_generator(loss)
    return {"loss_g": loss}


def iteration(parts: StepParts, inputs, phase=None) -> list[Stats]:
    """One generator iteration: n critic steps, then one generator step, on `inputs`' draws (trainer.core.inputs).
    The generator step count is the caller's to advance (trainer.core.loop.train_step: the EMA and the statistics
    of the iteration come first)."""
    phase = phase or _no_phase
    with phase("critic"):
        records = [critic_step(parts, *inputs.critic()) for _ in range(inputs.n_critic)]
    with phase("generator"):
        records.append(generator_step(parts, *inputs.generator()))
    return records


@contextmanager
def _no_phase(name: str) -> Iterator[None]:
    yield


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's parameters take no gradient inside the block (restored even if it raises)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


def critic_loss(scores: Callable[[Tensor, Tensor], Scores], objective: Objective) -> CriticLoss:
    """The critic loss of a batch: the critic's main pass over real and fake, then the objective's terms."""

    def loss(real: Tensor, fake: Tensor, labels: Optional[Tensor], eps: Tensor) -> tuple[Tensor, Stats]:
        d_real, d_fake, logits_real, logits_fake = scores(real, fake)
        batch = CriticBatch(real, fake, eps, labels, d_real, d_fake, logits_real, logits_fake)
        value, stats = objective.critic_loss(batch)  # the loss's own terms, then AC-GAN, penalty, drift
        return value, {**stats, "wasserstein": d_real.mean() - d_fake.mean(), "d_real": d_real.mean()}

    return loss


def generator_loss(generator: nn.Module, critic: nn.Module, objective: Objective) -> GeneratorLoss:
    """The generator loss of a noise batch: G(z), augmented, through the critic, then the objective's terms."""

    def loss(z: Tensor, labels: Optional[Tensor], augment: Augment) -> Tensor:
        d_fake, logits = critic(augment(generator(z, labels)), with_classes=True)
        return objective.generator_loss(d_fake.float(), logits, labels)

    return loss


def relativistic_generator_loss(generator: nn.Module, critic: nn.Module, objective: Objective) -> GeneratorLoss:
    """RpGAN's generator loss of a noise batch and its paired real batch: both through the (frozen) critic."""

    def loss(z: Tensor, labels: Optional[Tensor], augment: Augment, real: Tensor) -> Tensor:
        d_fake, logits = critic(augment(generator(z, labels)), with_classes=True)
        d_real, _ = critic(augment(real.detach()), with_classes=True)
        return objective.generator_loss(d_fake.float(), logits, labels, d_real.float())

    return loss


def joint_pass(critic: nn.Module) -> Callable[[Tensor, Tensor], Scores]:
    """One critic forward over cat(real, fake): exact, since no critic has batch statistics; half the launches."""

    def scores(real: Tensor, fake: Tensor) -> Scores:
        n = real.shape[0]
        out, logits = critic(torch.cat([real, fake]), with_classes=True)
        split = (None, None) if logits is None else (logits[:n], logits[n:])
        return out[:n].float(), out[n:].float(), *split

    return scores


def two_passes(critic: nn.Module, critic_outside_ddp: nn.Module) -> Callable[[Tensor, Tensor], Scores]:
    """Two critic forwards (smaller activations: faster on CPUs); the second skips DDP, which reduces once anyway."""

    def scores(real: Tensor, fake: Tensor) -> Scores:
        (d_real, logits_real), (d_fake, logits_fake) = (
            critic(real, with_classes=True),
            critic_outside_ddp(fake, with_classes=True),
        )
        return d_real.float(), d_fake.float(), logits_real, logits_fake

    return scores
