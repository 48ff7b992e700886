"""Exponential moving average of the generator's weights, the usual sampling network for image GANs."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen float32 copy of `model` updated as ema <- d * ema + (1 - d) * model; buffers are copied.

    d = min(decay, (1 + n) / (10 + n)) after n updates: the usual warm-up, so a short run's EMA is not dominated by
    the random initial weights (with d = 0.999 from the start, 40% of the weight would still be at init after 500).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._count: int | None = 0  # host copy of `updates`, so an update never waits for the device

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._count = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.updates) if self._count is None else self._count
        decay = min(self.decay, (1 + n) / (10 + n))
        ema_params, params = list(self.model.parameters()), [p.float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - decay)
        self._count = n + 1
        self.updates.fill_(self._count)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=False):
            ema_buf.copy_(buf)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(z, labels)
