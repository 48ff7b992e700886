"""Exponential moving average of the generator's weights, the usual sampling network for image GANs."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen float32 copy of `model` updated as ema <- decay * ema + (1 - decay) * model; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params, params = list(self.model.parameters()), [p.float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - self.decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=False):
            ema_buf.copy_(buf)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
