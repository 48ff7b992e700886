"""Conformance with peer libraries on the same inputs: torch-mimicry's WGAN-GP penalty (value and every critic
parameter gradient), torch-fidelity's FD/IS/KID/precision-recall and prdc's density/coverage on the same features.

Each test skips, naming the package, when its peer cannot be imported (they are in the dev extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.core.losses import gradient_penalty
from trainer.metrics.inception import kernel_inception_distance
from trainer.metrics.manifold import density_coverage, precision_recall
from trainer.metrics.moments import Moments, ScoreSums, frechet_distance
from trainer.nets.models import build_models

# Measured here (CPU, float32 critics, float64 metrics): penalty relative difference <= 3.3e-7, parameter gradients
# <= 1.1e-6 of each tensor's largest entry (dcgan64; resnet32 2.7e-7, conv-small 3.5e-7); FD 1.4e-11, IS 0,
# KID 1.6e-16 relative; precision/recall, density/coverage exactly (continuous features: no ties, so < and <= agree).
PENALTY_RTOL, GRAD_RTOL = 1e-5, 1e-5


def load_mimicry_penalty(monkeypatch: pytest.MonkeyPatch):
    """WGANGPBaseDiscriminator.compute_gradient_penalty_loss without running torch_mimicry's package __init__ files,
    which import TensorFlow and TensorBoard for its metrics and logger: the packages on the way to the module are
    stand-ins whose __path__ is the real folder, so only the module files the penalty needs are executed."""
    spec = importlib.util.find_spec("torch_mimicry")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-mimicry is not installed (pip install --no-deps torch-mimicry==0.1.16, as the README does)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("torch_mimicry", "torch_mimicry.nets", "torch_mimicry.nets.gan", "torch_mimicry.nets.basemodel",
                 "torch_mimicry.nets.wgan_gp", "torch_mimicry.modules"):  # fmt: skip
        package = types.ModuleType(name)
        package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        monkeypatch.setitem(sys.modules, name, package)
    for name in ("torch_mimicry.nets.gan.gan", "torch_mimicry.nets.basemodel.basemodel",
                 "torch_mimicry.modules.losses", "torch_mimicry.nets.wgan_gp.wgan_gp_base"):  # fmt: skip
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("torch_mimicry.nets.wgan_gp.wgan_gp_base")
    return module.WGANGPBaseDiscriminator.compute_gradient_penalty_loss


@pytest.mark.parametrize("preset, size", [("resnet32", 32), ("dcgan64", 64), ("conv-small", 32)])
def test_penalty_and_every_critic_gradient_match_torch_mimicry(preset: str, size: int, monkeypatch) -> None:
    mimicry_penalty = load_mimicry_penalty(monkeypatch)
    torch.manual_seed(0)
    _, critic = build_models(preset, 16, 0, 3, size)  # torch-mimicry's penalty assumes 3 channels
    real, fake = torch.rand(4, 3, size, size) * 2 - 1, torch.rand(4, 3, size, size) * 2 - 1
    params = [p for p in critic.parameters() if p.requires_grad]

    torch.manual_seed(123)  # mimicry draws its alpha with torch.rand(N, 1) from the global generator
    theirs = mimicry_penalty(types.SimpleNamespace(forward=critic), real, fake, gp_scale=10.0)
    their_grads = torch.autograd.grad(theirs, params, allow_unused=True)
    eps = torch.rand(4, generator=torch.Generator().manual_seed(123))  # the same 4 numbers
    penalty, norms = gradient_penalty(critic, real, fake, eps)
    ours = 10.0 * penalty
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)

    assert float(ours.detach()) > 1e-3 and (norms - 1).abs().max() > 1e-2  # a penalty that is not trivially zero
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=PENALTY_RTOL)
    reached, weights = 0, 0
    for (name, p), mine, other in zip(critic.named_parameters(), our_grads, their_grads, strict=True):
        # The input gradient of a piecewise-linear critic does not depend on its biases (they only move the ReLU
        # kinks), so biases get zero (or, for the output bias, no) gradient on both sides; weights must be reached.
        mine, other = (torch.zeros_like(p) if g is None else g for g in (mine, other))
        scale = other.abs().max()
        reached, weights = reached + int(scale > 0 and p.dim() > 1), weights + int(p.dim() > 1)
        assert (mine - other).abs().max() <= GRAD_RTOL * scale, f"{preset}.{name}"
    assert reached == weights > 3  # every weight tensor is compared on non-zero gradients


def test_mimicry_penalty_changes_with_the_interpolation_weights(monkeypatch) -> None:
    """Control: the comparison above depends on both sides using the same eps (else it could not fail)."""
    mimicry_penalty = load_mimicry_penalty(monkeypatch)
    torch.manual_seed(0)
    _, critic = build_models("conv-small", 16, 0, 3, 32)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(123)
    # A quadratic term makes the gradient norm depend on where x_hat lies, hence on eps.
    bowl = lambda x: critic(x) + 0.05 * x.pow(2).flatten(1).sum(1)  # noqa: E731
    theirs = float(mimicry_penalty(types.SimpleNamespace(forward=bowl), real, fake, gp_scale=10.0).detach())
    same_eps = torch.rand(4, generator=torch.Generator().manual_seed(123))
    other_eps = torch.rand(4, generator=torch.Generator().manual_seed(124))
    assert 10.0 * float(gradient_penalty(bowl, real, fake, same_eps)[0]) == pytest.approx(theirs, rel=PENALTY_RTOL)
    assert 10.0 * float(gradient_penalty(bowl, real, fake, other_eps)[0]) != pytest.approx(theirs, rel=1e-2)


def features(seed: int, n: int = 600, dim: int = 32, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """n correlated Gaussian feature vectors: one fixed mixing matrix for every seed, then scaled and shifted."""
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99), dtype=torch.float64) / dim**0.5
    rng = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=rng, dtype=torch.float64) @ mixing) * scale + shift


fidelity = pytest.importorskip  # noqa: E731 - read as "needs torch-fidelity"


def test_frechet_distance_matches_torch_fidelity() -> None:
    metric_fid = fidelity("torch_fidelity.metric_fid", reason="torch-fidelity is not installed")
    real, fake = features(0), features(1, shift=0.3, scale=1.5)
    ours = frechet_distance(*moments(fake), *moments(real))
    mu1, s1 = fake.mean(0).numpy(), np.cov(fake.numpy(), rowvar=False)
    mu2, s2 = real.mean(0).numpy(), np.cov(real.numpy(), rowvar=False)
    theirs = metric_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert ours > 1 and ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-8)


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = Moments.zeros(x.shape[1])
    for chunk in x.split(128):
        m.add(chunk)
    return m.mean_cov()


def test_inception_score_matches_torch_fidelity() -> None:
    metric_isc = fidelity("torch_fidelity.metric_isc", reason="torch-fidelity is not installed")
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    sums = ScoreSums.zeros(10, 10)
    for part in torch.arange(1000).split(96):
        sums.add(logits[part], part, 1000)
    mean, std = sums.score()
    theirs = metric_isc.isc_features_to_metric(logits, splits=10, shuffle=False)
    assert mean > 1.5 and mean == pytest.approx(theirs["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-8)


def test_kid_matches_torch_fidelity_on_the_same_subsets() -> None:
    metric_kid = fidelity("torch_fidelity.metric_kid", reason="torch-fidelity is not installed")
    real, fake = features(3, n=400), features(4, n=400, shift=0.2)
    # One subset holding every sample: no subset draw, so both compute the same unbiased MMD^2 exactly.
    ours, _ = kernel_inception_distance(real, fake)
    theirs = metric_kid.kid_features_to_metric(fake, real, kid_subsets=1, kid_subset_size=400, verbose=False)
    assert ours > 1e-3 and ours == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10)


def test_precision_recall_match_torch_fidelity() -> None:
    metric_prc = fidelity("torch_fidelity.metric_prc", reason="torch-fidelity is not installed")
    real, fake = features(5, n=700), features(6, n=500, shift=0.25, scale=1.3)
    ours = precision_recall(real, fake, k=3)
    precision, recall = metric_prc.calculate_precision_recall_full(fake, real, neighborhood=3)
    assert 0.05 < ours["precision"] < 0.99 and 0.05 < ours["recall"] < 0.99
    # torch-fidelity averages in float32: compare the counts behind the shares (500 fakes, 700 reals) exactly.
    assert round(ours["precision"] * 500) == round(precision * 500)
    assert round(ours["recall"] * 700) == round(recall * 700)


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_density_coverage_match_prdc(k: int) -> None:
    prdc = fidelity("prdc", reason="prdc is not installed (pip install prdc, in the dev extra)")
    real, fake = features(7, n=800), features(8, n=600, shift=0.3, scale=1.2)
    theirs = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
    ours = {**precision_recall(real, fake, k), **density_coverage(real, fake, k)}
    assert 0.05 < ours["coverage"] < 0.95 and 0.05 < ours["density"]
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-12), key
