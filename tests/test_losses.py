"""Losses and gradient penalty against closed forms, explicit computations and finite differences."""

import pytest
import torch
from torch import nn

from trainer.core.losses import (
    LOSSES,
    SQRT_EPS,
    clip_weights,
    gradient_penalty,
    interpolate,
    nonsaturating_critic_loss,
    nonsaturating_generator_loss,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)


def linear_critic(w: torch.Tensor):
    return lambda x: (x.flatten(1) * w.flatten()).sum(1)


@pytest.mark.parametrize("shape", [(6, 3), (6, 1, 4, 4)])
@pytest.mark.parametrize("target", [0.3, 1.0, 1.7, 3.0])
def test_penalty_closed_form_for_linear_critic(shape, target):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape[1:], generator=gen)
    w = w * (target / w.norm())
    real, fake = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    norm = (w.double().pow(2).sum() + SQRT_EPS).sqrt().item()  # ||w|| over all non-batch dims
    penalty, norms = gradient_penalty(linear_critic(w), real, fake)
    assert penalty.item() == pytest.approx((norm - 1) ** 2, rel=1e-5, abs=1e-10)
    assert torch.allclose(norms.double(), torch.full((shape[0],), norm, dtype=torch.float64), rtol=1e-6)
    one_sided, _ = gradient_penalty(linear_critic(w), real, fake, one_sided=True)
    assert one_sided.item() == pytest.approx(max(norm - 1, 0.0) ** 2, rel=1e-5, abs=1e-10)
    if target < 1:
        assert one_sided.item() == 0.0


def test_interpolate_matches_explicit_per_sample_eps():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(5, 2, 3, 3, generator=gen), torch.randn(5, 2, 3, 3, generator=gen)
    eps = torch.rand(5, generator=gen)
    expected = torch.stack([eps[i] * real[i] + (1 - eps[i]) * fake[i] for i in range(5)])
    assert torch.allclose(interpolate(real, fake, eps), expected, atol=1e-6)


def test_penalty_draws_one_eps_per_sample():
    seen = []
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(8, 1, 4, 4, generator=gen), torch.randn(8, 1, 4, 4, generator=gen) + 3

    def critic(x):
        seen.append(x.detach().clone())
        return x.flatten(1).sum(1)

    gradient_penalty(critic, real, fake)
    ratio = ((seen[0] - fake) / (real - fake)).flatten(1)  # the eps of every element
    eps = ratio[:, 0]
    assert torch.allclose(ratio, eps[:, None].expand_as(ratio), atol=1e-4)
    assert ((eps >= 0) & (eps <= 1)).all() and eps.unique().numel() == 8
    gradient_penalty(critic, real, fake, eps=eps)  # an explicit eps is used as given
    assert torch.allclose(seen[1], interpolate(real, fake, eps), atol=1e-6)


def test_zero_gradient_critic_is_finite():
    w = nn.Parameter(torch.zeros(16))
    x = torch.randn(4, 1, 4, 4)
    penalty, norms = gradient_penalty(lambda t: t.flatten(1) @ w, x, x + 1)
    assert penalty.item() == pytest.approx((SQRT_EPS**0.5 - 1) ** 2, abs=1e-7)
    assert torch.allclose(norms, torch.full((4,), SQRT_EPS**0.5))
    penalty.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_penalty_parameter_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (4,), (4,), (1,)]  # W1, b1, w2, b2
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_(True) for s in shapes]
    real, fake, eps = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen), torch.rand(5, generator=gen)
    x_hat = interpolate(real, fake, eps).double()

    def reference(w1, b1, w2, b2):  # closed-form input gradient of w2 . tanh(W1 x + b1) + b2, all float64
        grad = (w2 * (1 - torch.tanh(x_hat @ w1.T + b1) ** 2)) @ w1
        return ((grad.pow(2).sum(1) + SQRT_EPS).sqrt() - 1).pow(2).mean()

    def critic(x):
        w1, b1, w2, b2 = params
        return torch.tanh(x.double() @ w1.T + b1) @ w2 + b2

    penalty, _ = gradient_penalty(critic, real, fake, eps=eps)
    penalty.backward()
    with torch.no_grad():
        assert penalty.item() == pytest.approx(reference(*params).item(), rel=1e-5)
        h = 1e-6
        for p in params:
            fd = torch.zeros_like(p)
            for i in range(p.numel()):
                p.view(-1)[i] += h
                up = reference(*params)
                p.view(-1)[i] -= 2 * h
                fd.view(-1)[i] = (up - reference(*params)) / (2 * h)
                p.view(-1)[i] += h
            analytic = torch.zeros_like(p) if p.grad is None else p.grad
            assert torch.allclose(analytic, fd, rtol=1e-4, atol=1e-6), (analytic, fd)
    assert params[0].grad.abs().max() > 1e-3


def test_loss_signs_and_formulas():
    gen = torch.Generator().manual_seed(4)
    d_real = torch.randn(7, generator=gen, dtype=torch.float64) * 3
    d_fake = torch.randn(7, generator=gen, dtype=torch.float64) * 3
    loss = wasserstein_critic_loss(d_real, d_fake).item()
    assert loss == pytest.approx((d_fake.mean() - d_real.mean()).item())
    assert wasserstein_critic_loss(d_real + 1, d_fake).item() == pytest.approx(loss - 1)
    assert wasserstein_generator_loss(d_fake).item() == pytest.approx(-d_fake.mean().item())
    sig_r, sig_f = 1 / (1 + torch.exp(-d_real)), 1 / (1 + torch.exp(-d_fake))
    expected = -torch.log(sig_r).mean() - torch.log(1 - sig_f).mean()
    assert nonsaturating_critic_loss(d_real, d_fake).item() == pytest.approx(expected.item(), rel=1e-10)
    assert nonsaturating_generator_loss(d_fake).item() == pytest.approx(-torch.log(sig_f).mean().item(), rel=1e-10)


def test_clip_weights():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2, 2, 12).reshape(4, 3))
        layer.bias.copy_(torch.tensor([-0.05, 0.3, 0.7, -0.9]))
    before = [p.detach().clone() for p in layer.parameters()]
    clip_weights(layer, 0.5)
    for old, new in zip(before, layer.parameters(), strict=True):
        assert (new.abs() <= 0.5).all()
        inside = old.abs() <= 0.5
        assert inside.any() and (~inside).any()
        assert torch.equal(new[inside], old[inside])
        assert torch.equal(new[~inside], 0.5 * old[~inside].sign())


def test_loss_specs_paper_defaults():
    gp, clip = LOSSES["wgan-gp"], LOSSES["wgan-clip"]
    assert (gp.optimizer, gp.lr, gp.betas, gp.penalty, gp.clip) == ("adam", 1e-4, (0.0, 0.9), "two-sided", False)
    assert gp.critic is wasserstein_critic_loss and gp.generator is wasserstein_generator_loss
    assert (clip.optimizer, clip.lr, clip.penalty, clip.clip) == ("rmsprop", 5e-5, None, True)
    assert LOSSES["wgan-lp"].penalty == "one-sided"
