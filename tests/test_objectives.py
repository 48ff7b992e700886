"""The objectives beside WGAN-GP: zero-centred R1/R2 (gan-r1), R3GAN's RpGAN + R1 + R2, the hinge loss.

Against closed forms (a linear and a quadratic critic, hand-made scores), with a control that a changed factor or
sign is caught; through the same fp32 penalty path under bf16 (a layer-level dtype trace); under a real 2-process
gloo job against one process on the concatenated batch; compiled against eager; resumed against uninterrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import TINY, ok, python_train, read_metrics, torchrun_train
from safetensors.torch import load_file
from test_compiled_loss import AOT, SMALL, assert_equivalent, trained

from trainer.core.build import Training, build, cosine_decay
from trainer.core.clock import Clock
from trainer.core.gate import configure
from trainer.core.losses import (
    LOSSES,
    CriticBatch,
    Penalty,
    gradient_penalty,
    hinge_critic_loss,
    relativistic_critic_loss,
    relativistic_generator_loss,
)
from trainer.core.step import critic_step
from trainer.data.toys import eight_gaussians
from trainer.errors import TrainerError
from trainer.nets.models import build_models

GAMMA = 0.7


@pytest.fixture(autouse=True)
def fresh_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class Linear(torch.nn.Module):
    """D(x) = w . x: grad_x D = w for every x, so R1 = R2 = ||w||^2 and d(gamma/2 ||w||^2)/dw = gamma w."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


class Quadratic(torch.nn.Module):
    """D(x) = a/2 ||x||^2: grad_x D = a x, so E||grad D(x)||^2 = a^2 E||x||^2 and its derivative in a is 2a E||x||^2."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * x.flatten(1).pow(2).sum(1)


def batch(real: torch.Tensor, fake: torch.Tensor) -> CriticBatch:
    zeros = torch.zeros(real.shape[0])
    return CriticBatch(real, fake, torch.rand(real.shape[0]), None, zeros, zeros)


def zero_centred(critic: torch.nn.Module, at: str, weight: float = GAMMA / 2, centre: float = 0.0) -> Penalty:
    """The penalty exactly as trainer.core.build.make_penalties makes R1 (at real) or R2 (at fake)."""
    return Penalty(
        forward=critic, weight=weight, clock=Clock(), at=at, centre=centre, name={"real": "r1"}.get(at, "r2")
    )


def check_linear_closed_form(penalty_of) -> None:
    """gamma/2 ||w||^2 and the parameter gradient gamma w, for R1 and for R2 alike."""
    critic = Linear(12)
    real, fake = torch.randn(16, 3, 2, 2), torch.randn(16, 3, 2, 2)
    for at in ("real", "fake"):
        critic.zero_grad()
        value, stats = penalty_of(critic, at)(batch(real, fake))
        value.backward()
        w = critic.w.detach()
        torch.testing.assert_close(value.detach(), GAMMA / 2 * w.pow(2).sum(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(critic.w.grad, GAMMA * w, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(stats[f"grad_norm_{at}"], w.norm().expand(16), rtol=1e-6, atol=1e-9)


def test_r1_and_r2_of_a_linear_critic_are_gamma_half_w_squared_with_gradient_gamma_w() -> None:
    check_linear_closed_form(zero_centred)


def test_the_closed_form_check_fails_when_a_factor_or_a_sign_changes() -> None:
    """Controls: gamma instead of gamma/2, and the WGAN-GP centre 1 instead of 0, are each caught."""
    with pytest.raises(AssertionError):
        check_linear_closed_form(lambda critic, at: zero_centred(critic, at, weight=GAMMA))
    with pytest.raises(AssertionError):
        check_linear_closed_form(lambda critic, at: zero_centred(critic, at, centre=1.0))


def test_r1_and_r2_of_a_quadratic_critic_read_their_own_batches() -> None:
    """R1 sees only the real batch, R2 only the fakes: a^2 E||x||^2 of each, derivative in a gamma a E||x||^2."""
    critic = Quadratic()
    real, fake = torch.randn(32, 5), 3 * torch.randn(32, 5)
    for at, x in (("real", real), ("fake", fake)):
        critic.zero_grad()
        value, stats = zero_centred(critic, at)(batch(real, fake))
        value.backward()
        a, mean_sq = critic.a.detach(), x.pow(2).sum(1).mean()
        torch.testing.assert_close(value.detach(), GAMMA / 2 * a**2 * mean_sq, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(critic.a.grad, GAMMA * a * mean_sq, rtol=1e-5, atol=1e-7)
        assert stats[{"real": "r1", "fake": "r2"}[at]].item() == pytest.approx((a**2 * mean_sq).item(), rel=1e-5)


def test_the_zero_centred_penalty_is_the_square_norm_of_the_input_gradient() -> None:
    """gradient_penalty(at=real, centre=0) against autograd by hand on a small MLP critic."""
    _, critic = build_models("toy", 2, 16, 0, 8)
    x = torch.randn(64, 2)
    value, norms = gradient_penalty(critic, x, torch.zeros_like(x), at="real", centre=0.0)
    x_leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_leaf).sum(), x_leaf)
    torch.testing.assert_close(value, grad.pow(2).sum(1).mean(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(norms, grad.norm(dim=1), rtol=1e-5, atol=1e-6)


def test_rpgan_and_hinge_on_hand_made_scores() -> None:
    d_real, d_fake = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 3.0, -1.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    assert relativistic_critic_loss(d_real, d_fake).item() == pytest.approx((sp(-1) + sp(3) + sp(0)) / 3)
    assert relativistic_generator_loss(d_fake, d_real).item() == pytest.approx((sp(1) + sp(-3) + sp(0)) / 3)
    want_hinge = (max(0, 1 - 2) + 1 + 2) / 3 + (2 + 4 + 0) / 3  # relu(1 - D(real)), relu(1 + D(fake))
    assert hinge_critic_loss(d_real, d_fake).item() == pytest.approx(want_hinge)
    # the pairing matters: shuffling the fakes changes RpGAN's value (it is not a difference of means)
    assert relativistic_critic_loss(d_real, d_fake.flip(0)).item() != pytest.approx(
        relativistic_critic_loss(d_real, d_fake).item()
    )


def test_the_registry_entries_and_their_paper_defaults() -> None:
    r3, r1 = LOSSES["r3gan"], LOSSES["gan-r1"]
    assert r3.penalty == "r1r2" and r3.relativistic and r3.gamma == 0.05 and r3.betas == (0.0, 0.99)
    assert r1.penalty == "r1" and not r1.relativistic and r1.gamma == 10.0
    assert LOSSES["hinge"].penalty is None and not LOSSES["hinge"].clip


def test_gamma_decays_by_half_a_cosine() -> None:
    assert cosine_decay(0.1, 100, 0) == 1.0 and cosine_decay(0.1, 100, 100) == pytest.approx(0.1)
    assert cosine_decay(0.1, 100, 50) == pytest.approx(0.55) and cosine_decay(0.1, 100, 500) == pytest.approx(0.1)


def _build(precision: str, *extra: str) -> Training:
    cfg = configure(
        None,
        ("model.width=8", "model.z_dim=16", "train.batch_size=8", f"train.precision={precision}", "train.ema_decay=0",
         "speed.channels_last=false", "train.n_critic=1", *extra),
    )  # fmt: skip
    return build(cfg, Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available()))


@pytest.mark.parametrize("loss", ["r3gan", "gan-r1"])
def test_zero_centred_penalties_run_in_float32_under_bf16(loss: str) -> None:
    """The main passes in bf16, then each penalty's own pass (R1 on the real batch, R2 on the fakes) in float32."""
    t = _build("bf16", f"loss.name={loss}", "speed.joint_forward=false")
    seen: list[torch.dtype] = []
    layers = [m for m in t.parts.critic.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    stats = critic_step(t.parts, *t.inputs.critic())
    passes = len(seen) // len(layers)
    penalties = 2 if loss == "r3gan" else 1
    assert passes == 2 + penalties
    assert set(seen[: 2 * len(layers)]) == {torch.bfloat16} and set(seen[2 * len(layers) :]) == {torch.float32}
    assert ("r2" in stats) == (loss == "r3gan") and "r1" in stats
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in t.parts.critic.parameters())


SEED, B, Z, WIDTH, LR = 3, 8, 2, 16, 0.05


def _reference_r3gan_step(gamma: float) -> tuple[dict, dict]:
    """One critic step and one generator step of R3GAN by hand (plain autograd, SGD) on both processes' draws
    concatenated. Process r seeds torch with SEED + r and draws: real, z, eps (every loss draws it), then the
    generator's z and its paired real batch."""
    torch.manual_seed(SEED)
    gen, critic = build_models("toy", Z, WIDTH, 0, 8)
    draws = []
    for rank in range(2):
        torch.manual_seed(SEED + rank)
        draws.append((eight_gaussians(B), torch.randn(B, Z), torch.rand(B), torch.randn(B, Z), eight_gaussians(B)))
    real, z, _, z_gen, real_gen = (torch.cat(parts) for parts in zip(*draws, strict=True))
    fake = gen(z).detach()
    r, f = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    d_real, d_fake = critic(r), critic(f)
    (g_real,) = torch.autograd.grad(d_real.sum(), r, create_graph=True)
    (g_fake,) = torch.autograd.grad(d_fake.sum(), f, create_graph=True)
    r1, r2 = g_real.pow(2).sum(1).mean(), g_fake.pow(2).sum(1).mean()
    loss_d = F.softplus(d_fake - d_real).mean() + gamma / 2 * (r1 + r2)
    grads = torch.autograd.grad(loss_d, list(critic.parameters()), allow_unused=True)
    with torch.no_grad():
        for param, grad in zip(critic.parameters(), grads, strict=True):
            param -= LR * (0 if grad is None else grad)
    loss_g = F.softplus(critic(real_gen) - critic(gen(z_gen))).mean()
    grads = torch.autograd.grad(loss_g, list(gen.parameters()))
    with torch.no_grad():
        for param, grad in zip(gen.parameters(), grads, strict=True):
            param -= LR * grad
    return gen.state_dict(), critic.state_dict()


def test_r3gan_under_two_process_ddp_equals_one_process_on_the_concatenated_batch(run_dir: Path) -> None:
    ok(
        torchrun_train(
            2, f"run.dir={run_dir}", f"seed={SEED}", "data.name=8gaussians", "model.name=toy", f"model.z_dim={Z}",
            f"model.width={WIDTH}", f"train.batch_size={B}", "train.n_critic=1", "train.steps=1", "loss.name=r3gan",
            f"loss.gamma={GAMMA}", "train.ema_decay=0", "optim.name=sgd", f"optim.lr_d={LR}", f"optim.lr_g={LR}",
            "log.every=1", "log.sample_every=0", "checkpoint.every=0", "eval.at_end=false",
        )
    )  # fmt: skip
    ckpt = run_dir / "checkpoints" / "step-00000001"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["fingerprints"][0] == state["fingerprints"][1]
    want_gen, want_critic = _reference_r3gan_step(GAMMA)
    got_gen, got_critic = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "model_1.safetensors"))
    for want, got in ((want_critic, got_critic), (want_gen, got_gen)):
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # control: the same reference without R2 is measurably different, so the comparison sees the penalty
    _, without_r2 = _reference_r3gan_step(0.0)
    assert max((without_r2[k] - want_critic[k]).abs().max().item() for k in want_critic) > 1e-5


TOY_R3 = (*SMALL, "data.name=8gaussians", "model.name=toy", "model.width=32", "seed=5", "train.ema_decay=0")


@pytest.mark.parametrize("loss", ["r3gan", "gan-r1", "hinge"])
def test_compiled_losses_equal_eager_for_the_new_objectives(loss: str) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    setting = (*TOY_R3, f"loss.name={loss}", "optim.betas=null")
    eager = trained(*setting)
    torch._dynamo.utils.counters.clear()
    assert_equivalent(eager, trained(*setting, *AOT))


def test_r3gan_resumes_exactly(tmp_path: Path) -> None:
    """Its generator step draws a real batch too, and gamma decays with the step: a run resumed from its step-2
    checkpoint (the data position, the RNG and the one step counter come back) ends with the same weights."""
    import shutil

    keys = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32",
            "loss.name=r3gan", "loss.gamma_final=0.01", "train.n_critic=1", *TINY, "checkpoint.every=2",
            "checkpoint.keep=0"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ok(python_train(f"run.dir={straight}", "train.steps=4", *keys))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    ok(python_train(f"run.dir={resumed}", "train.steps=4", "run.resume=latest", *keys))
    for name in ("model.safetensors", "model_1.safetensors"):
        a, b = (load_file(str(d / "checkpoints/step-00000004" / name)) for d in (straight, resumed))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    r2 = [[m["r2"] for m in read_metrics(d)] for d in (straight, resumed)]
    assert r2[0] == r2[1] and len(r2[0]) == 4


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("loss.gamma=1",), "loss.gamma=1.0 sets the zero-centred penalties' gamma, but loss.name=wgan-gp has none"),
        (("loss.name=r3gan", "train.batch_size_g=128"), "pairs every fake with a real sample"),
        (("loss.name=r3gan", "loss.gamma=-1"), "loss.gamma=-1.0 is impossible"),
        (("loss.name=r3gan", "speed.cuda_graph=true"), "speed.cuda_graph=true cannot run with loss.name=r3gan"),
        (("loss.name=r3gan", "loss.gamma_final=0.01", "speed.compile=true"), "loss.gamma_final changes gamma"),
        (("loss.name=r3gan", "model.conditional=true", "model.name=resnet32", "data.image_size=32"), "not supported"),
    ],
)
def test_what_the_new_objectives_cannot_do_is_refused_with_the_way_out(overrides: tuple, words: str) -> None:
    with pytest.raises(TrainerError, match=words.replace("(", r"\(").replace(".", r"\.")):
        configure(None, overrides)
