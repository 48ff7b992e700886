"""Every preset in the registry: output shapes and ranges, no batch statistics in critics, penalty gradient flow."""

from functools import lru_cache

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from trainer.core.losses import gradient_penalty
from trainer.nets.models import PRESETS, build_models

Z_DIM, N = 16, 3
# The paper presets are checked here at a small width (their full widths: tests/test_paper_presets.py, batch 2).
SMALL = {"resnet32": 16, "resnet64": 4, "dcgan64": 4, "resnet128": 4}
CASES = [(name, size) for name, preset in PRESETS.items() for size in (preset.image_sizes or (0,))]
BATCH_STATS = (_BatchNorm, nn.GroupNorm, _InstanceNorm, _DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)


@lru_cache(maxsize=None)
def pair(name: str, size: int):
    torch.manual_seed(0)
    return build_models(name, Z_DIM, SMALL.get(name, 0), 0 if PRESETS[name].is_toy else 3, size)


def data_shape(name: str, size: int) -> tuple[int, ...]:
    return (2,) if PRESETS[name].is_toy else (3, size, size)


def test_registry_covers_toy_and_images():
    assert any(p.is_toy for p in PRESETS.values()) and any(p.image_sizes for p in PRESETS.values())


@pytest.mark.parametrize("name, size", CASES)
def test_output_shapes(name, size):
    gen, critic = pair(name, size)
    with torch.no_grad():
        fake = gen(torch.randn(N, Z_DIM))
        assert fake.shape == (N, *data_shape(name, size))
        if not PRESETS[name].is_toy:
            assert fake.abs().max() <= 1
        assert critic(fake).shape == (N,)


@pytest.mark.parametrize("name, size", CASES)
def test_critic_has_no_batch_statistics(name, size):
    _, critic = pair(name, size)
    assert not [m for m in critic.modules() if isinstance(m, BATCH_STATS)]


@pytest.mark.parametrize("name, size", CASES)
def test_penalty_gradients_reach_critic_weights(name, size):
    _, critic = pair(name, size)
    critic.zero_grad(set_to_none=True)
    real, fake = torch.randn(N, *data_shape(name, size)), torch.randn(N, *data_shape(name, size))
    penalty, _ = gradient_penalty(critic, real, fake)
    penalty.backward()
    params = dict(critic.named_parameters())
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    # Biases cannot move the input gradient of a piecewise-linear critic, so only the weights must all be reached.
    weights = {k: p for k, p in params.items() if p.dim() > 1}
    assert weights and all(p.grad is not None and p.grad.abs().max() > 0 for p in weights.values())


@pytest.mark.parametrize("name, size", CASES)
def test_critic_samples_are_independent(name, size):
    _, critic = pair(name, size)
    x = torch.randn(4, *data_shape(name, size))
    changed = x.clone()
    changed[1:] = torch.randn_like(changed[1:])
    with torch.no_grad():
        out, out_changed = critic(x), critic(changed)
    assert torch.allclose(out[0], out_changed[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1:], out_changed[1:])
