"""The plain PyTorch WGAN-GP loop the benchmark races: three critic forwards, fp32, a DataLoader, no Accelerate."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.config import Config
from trainer.core.losses import LOSSES
from trainer.data.batches import to_unit_range
from trainer.data.registry import DATASETS
from trainer.nets.models import build_models


def dataloader_batches(images: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches in [-1, 1] from a DataLoader over a float TensorDataset in host memory."""
    dataset = TensorDataset(to_unit_range(images))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    while True:
        yield from (x for (x,) in loader)


class ReferenceLoop:
    """Algorithm 1 as popular implementations write it; `data` yields host batches, moved to `device` each step.

    Same networks (trainer.nets.models.build_models, same seed, so the same initial weights), same losses, optimizer and
    noise draws in the same order as the trainer, so fed the same batches both compute the same numbers.
    """

    def __init__(self, cfg: Config, device: torch.device, data: Iterator[Tensor]) -> None:
        self.cfg, self.device, self.data = cfg, device, data
        self.spec = LOSSES[cfg.loss.name]
        torch.manual_seed(cfg.seed)
        channels = DATASETS[cfg.data.name].channels
        gen, critic = build_models(cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, cfg.data.image_size)
        self.generator, self.critic = gen.to(device), critic.to(device)
        self.opt_g = self._optimizer(self.generator, cfg.optim.lr_g)
        self.opt_d = self._optimizer(self.critic, cfg.optim.lr_d)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False) if cfg.train.ema_decay > 0 else None
        self.ema_updates = 0

    def _optimizer(self, net: nn.Module, lr: Optional[float]) -> torch.optim.Optimizer:
        name, lr = self.cfg.optim.name or self.spec.optimizer, lr or self.spec.lr
        if name == "adam":
            return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(self.cfg.optim.betas or self.spec.betas))
        if name == "rmsprop":
            return torch.optim.RMSprop(net.parameters(), lr=lr)
        return torch.optim.SGD(net.parameters(), lr=lr)

    def step(self, timer=None) -> tuple[Tensor, Tensor]:
        """n_critic critic updates and one generator update; returns (critic losses (n_critic,), generator loss).

        `timer` (trainer.accel.timer.PhaseTimer) times the phases as the trainer's are timed.
        """
        phase = timer.phase if timer is not None else (lambda name: nullcontext())
        with phase("critic"):
            losses_d = [self.critic_update(phase) for _ in range(self.cfg.train.n_critic)]
        with phase("generator"):
            loss_g = self.generator_update()
        return torch.stack(losses_d), loss_g

    def critic_update(self, phase) -> Tensor:
        cfg, n = self.cfg, self.cfg.train.batch_size
        real = next(self.data).to(self.device)
        z = torch.randn(n, cfg.model.z_dim, device=self.device)
        eps = torch.rand(n, 1, 1, 1, device=self.device)
        with torch.no_grad():
            fake = self.generator(z)
        d_real, d_fake = self.critic(real), self.critic(fake)
        loss = self.spec.critic(d_real, d_fake)
        if self.spec.penalty and cfg.loss.gp_weight > 0:
            with phase("penalty"):
                x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)[0]
                gap = grad.flatten(1).norm(2, dim=1) - 1
                gap = gap.clamp(min=0) if self.spec.penalty == "one-sided" else gap
            loss = loss + cfg.loss.gp_weight * gap.pow(2).mean()
        if cfg.loss.drift > 0:
            loss = loss + cfg.loss.drift * d_real.pow(2).mean()
        self.opt_d.zero_grad()
        loss.backward()
        self.opt_d.step()
        if self.spec.clip:
            with torch.no_grad():
                for param in self.critic.parameters():
                    param.clamp_(-cfg.loss.clip, cfg.loss.clip)
        return loss.detach()

    def generator_update(self) -> Tensor:
        n = self.cfg.train.batch_size_g or self.cfg.train.batch_size
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device)
        for param in self.critic.parameters():
            param.requires_grad = False
        loss = self.spec.generator(self.critic(self.generator(z)))
        self.opt_g.zero_grad()
        loss.backward()
        self.opt_g.step()
        for param in self.critic.parameters():
            param.requires_grad = True
        if self.ema is not None:
            self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.train.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for ema_param, param in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            ema_param.mul_(decay).add_(param, alpha=1 - decay)
        for ema_buf, buf in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.ema_updates += 1
