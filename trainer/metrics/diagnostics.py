"""WGAN diagnostics for metrics.jsonl: the share of interpolate gradient norms above 1 and per-tensor gradient norms."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def share_above_one(record: dict[str, Tensor]) -> dict[str, Tensor]:
    """{"grad_norm_above_1": share of this critic step's interpolate gradient norms above 1} (on the device, no sync);
    nothing for a record without per-sample norms (generator steps, losses without a penalty)."""
    norms = record.get("grad_norm")
    if not isinstance(norms, Tensor) or norms.dim() == 0:
        return {}
    return {"grad_norm_above_1": (norms.detach() > 1).float().mean()}


def tensor_grad_norms(module: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's current gradient (one torch._foreach_norm, one host transfer), by parameter name;
    parameters without a gradient (frozen, or partitioned away by DeepSpeed) are left out."""
    named = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return {}
    norms = torch.stack(torch._foreach_norm([g.float() for _, g in named])).tolist()
    return dict(zip((name for name, _ in named), norms, strict=True))


def layer_gradients(critic: nn.Module, generator: nn.Module) -> dict:
    """The log interval's last update's gradient norms per weight tensor of both networks ("layer_grad_norms", a
    nested dict for metrics.jsonl) and the critic's smallest and largest weight-gradient norm (tracker scalars).

    With weight clipping the critic's norms explode or vanish from layer to layer (max/min of several orders of
    magnitude); with the penalty they stay within a small factor (Gulrajani et al. 2017, Figure 1b)."""
    critic_norms, generator_norms = tensor_grad_norms(critic), tensor_grad_norms(generator)
    out: dict = {"layer_grad_norms": {"critic": critic_norms, "generator": generator_norms}}
    weights = [v for k, v in critic_norms.items() if k.endswith("weight")]
    if weights:
        out.update(layer_grad_norm_d_min=min(weights), layer_grad_norm_d_max=max(weights))
    return out
