"""Mixed precision: the main critic pass runs in low precision, the penalty's forward and double backward in fp32."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import TINY, ok, python_train, read_metrics
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.accel.runtime import fp32_forward
from trainer.accel.speed import float32_modes
from trainer.core.build import Training, build
from trainer.core.gate import configure
from trainer.core.guard import NonFiniteGuard
from trainer.core.losses import gradient_penalty, interpolate, wasserstein_critic_loss
from trainer.core.step import Update, critic_step
from trainer.nets.models import build_models

DEVICE_PRECISIONS = ["bf16"] + (["fp16"] if torch.cuda.is_available() else [])  # Accelerate has no fp16 on CPU


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _parts(precision: str, batch: int = 8, *extra: str) -> Training:
    cfg = configure(
        None,
        ("model.width=8", "model.z_dim=16", f"train.batch_size={batch}", f"train.precision={precision}",
         "train.ema_decay=0", "speed.channels_last=false", *extra),
    )  # fmt: skip
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    return build(cfg, accelerator)


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("precision", DEVICE_PRECISIONS)
def test_critic_layers_see_low_precision_in_main_pass_and_fp32_in_penalty(precision: str, joint: bool) -> None:
    """One main pass over real and fake together (GPU default) or two (CPU default), then the penalty's pass."""
    parts, batch = _parts(precision, 8, f"speed.joint_forward={str(joint).lower()}"), 8
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    seen: list[tuple[int, torch.dtype]] = []
    layers = [m for m in parts.parts.critic.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        layer.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape[0], out.dtype)))
    critic_step(parts.parts, *parts.inputs.critic())
    main, penalty = seen[: -len(layers)], seen[-len(layers) :]  # the interpolates' pass comes last
    assert [rows for rows, _ in main] == [2 * batch] * len(layers) if joint else [batch] * 2 * len(layers)
    assert [rows for rows, _ in penalty] == [batch] * len(layers)
    assert {dtype for _, dtype in main} == {low}
    assert {dtype for _, dtype in penalty} == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in parts.parts.critic.parameters())


def _penalty_grads(critic_fn, critic_params, real, fake, eps) -> torch.Tensor:
    penalty, _ = gradient_penalty(critic_fn, real, fake, eps)
    grads = torch.autograd.grad(penalty, critic_params, allow_unused=True)  # the output bias never reaches a gradient
    return torch.cat(
        [torch.zeros_like(p).flatten() if g is None else g.flatten() for g, p in zip(grads, critic_params, strict=True)]
    )


@pytest.fixture
def ieee_fp32():
    """True float32 for the comparison: on CUDA, float32 convs would otherwise use TF32 (cuDNN's default)."""
    with float32_modes(("ieee", "ieee")):
        yield


def test_bf16_run_penalty_gradients_match_fp32(ieee_fp32) -> None:
    """Same critic, same inputs: the penalty's parameter gradients under bf16 mode equal the fp32 ones to 1e-5
    (relative), because the penalty path is fp32; the naive bf16 penalty is off by far more; the whole critic loss
    (main pass in bf16) stays within 5% of fp32."""
    parts = _parts("bf16")
    critic, device = parts.parts.update_critic.module, parts.accelerator.device  # the prepared critic
    reference = build_models("conv-small", 16, 8, 1, 8)[1].to(device)
    reference.load_state_dict(parts.accelerator.unwrap_model(critic).state_dict())
    torch.manual_seed(1)
    real, fake, eps = torch.rand(16, 1, 8, 8) * 2 - 1, torch.rand(16, 1, 8, 8) * 2 - 1, torch.rand(16)
    real, fake, eps = real.to(device), fake.to(device), eps.to(device)
    params = list(critic.parameters())
    want = _penalty_grads(reference, list(reference.parameters()), real, fake, eps)
    ours = _penalty_grads(partial(fp32_forward, critic), params, real, fake, eps)
    naive = _penalty_grads(critic, params, real, fake, eps)  # through Accelerate's autocast forward: bf16
    err_ours, err_naive = ((ours - want).norm() / want.norm()).item(), ((naive - want).norm() / want.norm()).item()
    assert err_ours < 1e-5, err_ours
    assert err_naive > 10 * max(err_ours, 1e-7), (err_naive, err_ours)

    def full_loss_grads(main_fn, pen_fn, ps):
        penalty, _ = gradient_penalty(pen_fn, real, fake, eps)
        out = main_fn(torch.cat([real, fake])).float()
        loss = wasserstein_critic_loss(out[:16], out[16:]) + 10 * penalty
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, ps)])

    want_full = full_loss_grads(reference, reference, list(reference.parameters()))
    ours_full = full_loss_grads(critic, partial(fp32_forward, critic), params)
    assert ((ours_full - want_full).norm() / want_full.norm()).item() < 5e-2


def test_bf16_training_run_through_train_py(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=3", "train.precision=bf16", *TINY))
    metrics = read_metrics(run_dir)
    assert len(metrics) == 3 and all(np.isfinite(m["loss_d"]) and np.isfinite(m["penalty"]) for m in metrics)


class DtypeTrace(TorchDispatchMode):
    """Every operator below autograd, with the floating dtypes of its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [x for x in pytree.tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)]
        self.ops.append((func.name(), {x.dtype for x in tensors if x.is_floating_point()}))
        return out

    def low(self) -> list[str]:
        return [name for name, dtypes in self.ops if dtypes & {torch.bfloat16, torch.float16}]


def test_whole_penalty_stays_fp32_under_a_callers_autocast() -> None:
    """A caller wraps the step in its own bf16 autocast: every operator of the penalty (interpolation, forward, input
    gradient, norm) and of the step's backward through it (the double backward into the weights) still runs on
    float32 tensors, and the gradients equal the ones computed without autocast bit for bit. Control: the same
    penalty without the guards (autocast on, backward inside it) runs bf16 matmuls, which the trace sees."""
    critic = build_models("conv-small", 16, 8, 1, 8)[1]
    torch.manual_seed(2)
    real, fake, eps = torch.rand(8, 1, 8, 8) * 2 - 1, torch.rand(8, 1, 8, 8) * 2 - 1, torch.rand(8)
    update = Update(
        torch.optim.SGD(critic.parameters(), lr=0.0), critic, lambda loss: loss.backward(), NonFiniteGuard(0, "")
    )

    def penalty_grads() -> torch.Tensor:
        penalty, _ = gradient_penalty(critic, real, fake, eps)
        update(penalty)  # the step's own zero_grad, backward and (here no-op) update
        return torch.cat([q.grad.flatten() for q in critic.parameters() if q.grad is not None])

    plain = penalty_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16), DtypeTrace() as trace:
        wrapped = penalty_grads()
    assert len(trace.ops) > 50 and trace.low() == []
    assert torch.equal(wrapped, plain)
    with torch.autocast("cpu", dtype=torch.bfloat16), DtypeTrace() as control:
        x_hat = interpolate(real, fake, eps).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        (grad.flatten(1).norm(dim=1) - 1).pow(2).mean().backward()
    assert control.low(), "the trace should see the unguarded bf16 operators"
