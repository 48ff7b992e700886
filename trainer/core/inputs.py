"""The step's inputs, drawn in one fixed order from the data and each process's noise stream."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from trainer.data.registry import Batches


class Draws:
    """Per critic step the real batch (and its labels when conditional), z, eps; per generator step z (and uniform
    labels when conditional). eps is drawn for every loss, so the random stream does not depend on the loss."""

    def __init__(
        self,
        batches: Batches,
        n_critic: int,
        batch: int,
        batch_g: int,
        z_dim: int,
        num_classes: int,
        device,
        paired_real: bool = False,
    ) -> None:
        self.batches, self.n_critic, self.batch, self.batch_g = batches, n_critic, batch, batch_g
        self.z_dim, self.num_classes, self.device = z_dim, num_classes, device
        self.paired_real = paired_real  # relativistic losses: the generator step also takes a real batch

    def critic(self) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
        if self.num_classes:
            real, labels = self.batches.next_labelled()
        else:
            real, labels = self.batches.next(), None
        z = torch.randn(self.batch, self.z_dim, device=self.device)
        eps = torch.rand(self.batch, device=self.device)
        return real, labels, z, eps

    def generator(self) -> tuple[Tensor, ...]:
        """z and labels; for a relativistic loss then the next real batch (drawn after the noise)."""
        z = torch.randn(self.batch_g, self.z_dim, device=self.device)
        labels = torch.randint(0, self.num_classes, (self.batch_g,), device=self.device) if self.num_classes else None
        return (z, labels, self.batches.next()) if self.paired_real else (z, labels)
