"""speed.compile: the whole critic loss (main pass, fp32 penalty, every term) and the whole generator loss, compiled.

The penalty's input gradient is taken with torch.func (trainer.core.losses.functional_input_gradient), so the graph
aot_autograd traces is first order; the step's single `loss.backward()` then runs aot_autograd's backward of it,
which is the penalty's double backward. The penalty still runs in float32 with autocast off (gradient_penalty), the
main pass in the launch's precision. Whether a critic step pays the lazy penalty is host state (the run's clock,
advanced by the step): it is read here, outside the graphs, and picks one of two compiled losses (with the penalty,
without it), so no step recompiles.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from trainer.core.augment import identity
from trainer.core.losses import Objective, Penalty, Stats
from trainer.core.step import Augment, CriticLoss, GeneratorLoss, critic_loss


def compiled(loss: Callable, backend: str) -> Callable:
    """torch.compile, traced at the first call; `dynamic=False`: a few fixed batch sizes, one graph each."""
    return torch.compile(loss, backend=backend, dynamic=False)


class CompiledCriticLoss:
    """`critic_loss(scores, objective)` compiled twice, lazily: with the penalty terms (their input gradients by
    torch.func, no phase timer inside the graph) and without them, for the lazy penalty's steps that do not pay (all
    of a loss's penalties share one schedule: loss.lazy_penalty)."""

    def __init__(
        self,
        scores: Callable,
        objective: Objective,
        penalties: Penalty | Sequence[Penalty] | None,
        backend: str,
    ) -> None:
        if isinstance(penalties, Penalty):
            penalties = [penalties]
        self.penalties = list(penalties or [])
        traced = {id(p): p.traceable().term for p in self.penalties}
        paying = [traced.get(id(term), term) for term in objective.critic_terms]
        skipping = [term for term in objective.critic_terms if id(term) not in traced]
        self.losses = {  # each is traced at its first call (never, if it never runs)
            due: compiled(critic_loss(scores, objective.with_terms(terms)), backend)
            for due, terms in ((True, paying), (False, skipping))
        }

    def __call__(self, real: Tensor, fake: Tensor, labels: Optional[Tensor], eps: Tensor) -> tuple[Tensor, Stats]:
        due = bool(self.penalties) and self.penalties[0].due()
        return self.losses[due](real, fake, labels, eps)


class CompiledGeneratorLoss:
    """`generator_loss(...)` compiled; a DiffAugment policy runs eagerly between G's graph and the critic's (its random
    draws then come from torch's global generator in the eager order, so a compiled run augments as an eager one)."""

    def __init__(self, loss: GeneratorLoss, backend: str) -> None:
        self.loss = compiled(loss, backend)
        self.eager: dict[Augment, Augment] = {identity: identity}

    def __call__(self, z: Tensor, labels: Optional[Tensor], augment: Augment, *real: Tensor) -> Tensor:
        if augment not in self.eager:
            self.eager[augment] = torch.compiler.disable(augment)
        return self.loss(z, labels, self.eager[augment], *real)


def compiled_losses(
    scores: Callable,
    objective: Objective,
    penalties: Sequence[Penalty],
    generator_loss: GeneratorLoss,
    backend: str,
) -> tuple[CriticLoss, GeneratorLoss]:
    return CompiledCriticLoss(scores, objective, penalties, backend), CompiledGeneratorLoss(generator_loss, backend)
