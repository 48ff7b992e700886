"""speed.compile: each whole loss one compiled function, the penalty's input gradient by torch.func inside it; the
same run as the eager step (losses to 1e-5, weights to 1e-6), on a conv pair, a toy MLP and a conditional ResNet."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY, ok, read_metrics, torchrun_train

from trainer.accel.runtime import fp32_forward, make_accelerator, raw_module
from trainer.core.build import Training, build
from trainer.core.compiled import CompiledCriticLoss
from trainer.core.gate import configure
from trainer.core.loop import train_step
from trainer.core.step import joint_pass
from trainer.errors import TrainerError

STEPS = 5  # generator iterations, n_critic 2: 10 critic updates, 5 generator updates
SMALL = ("model.z_dim=16", "train.batch_size=16", "train.n_critic=2", "train.cpu=true", "train.cpu_threads=1")
CONV = (*SMALL, "model.width=8", "train.ema_decay=0", "seed=3")
TOY = (*SMALL, "data.name=8gaussians", "model.name=toy", "model.width=32", "seed=5", "train.ema_decay=0")
CONDITIONAL = (
    *SMALL, "model.name=resnet32", "model.width=8", "data.image_size=32", "model.conditional=true",
    "train.batch_size=8", "seed=11", "train.ema_decay=0",
)  # fmt: skip
# The same formulas in the same order (aot_eager runs the traced aten ops one by one; inductor fuses them, which
# reorders float32 sums): measured over these runs below 1e-6 on the losses and 1e-7 on the weights.
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-6
AOT = ("speed.compile=true", "speed.compile_backend=aot_eager")


@pytest.fixture(autouse=True)
def fresh_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def trained(*overrides: str, steps: int = STEPS) -> tuple[Training, list[dict], torch.Tensor]:
    """A run built as train.py builds it, `steps` generator iterations: its records and all weights afterwards."""
    cfg = configure(None, overrides)
    t = build(cfg, make_accelerator(cfg))
    records = []
    for _ in range(steps):
        train_step(t)
        records.append(t.stats.reduce(t.accelerator))
    nets = (raw_module(t.parts.generator), t.parts.critic)
    return t, records, torch.cat([q.detach().float().flatten() for net in nets for q in net.parameters()])


def differences(eager, compiled, keys=("loss_d", "loss_g", "penalty", "wasserstein")) -> tuple[float, float]:
    """(max abs difference of the logged values, max abs difference of the weights); both runs logged the same keys."""
    (_, ra, wa), (_, rb, wb) = eager, compiled
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    losses = max(abs(a[k] - b[k]) for a, b in zip(ra, rb, strict=True) for k in keys if k in a)
    return losses, (wa - wb).abs().max().item()


def assert_equivalent(eager, compiled, graphs: Optional[int] = 2) -> None:
    """Equal runs, the compiled one through `graphs` compiled graphs (each loss one; None: some)."""
    traced = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert traced == graphs if graphs is not None else traced > 0
    losses, weights = differences(eager, compiled)
    print(f"max |loss diff| {losses:.2e}, max |weight diff| {weights:.2e}")
    assert losses <= LOSS_TOL and weights <= WEIGHT_TOL, (losses, weights)


@pytest.mark.parametrize(
    "setting",
    [CONV, (*CONV, "speed.joint_forward=false", "speed.channels_last=true"), TOY, CONDITIONAL],
    ids=["conv-joint", "conv-two-passes-nhwc", "toy-mlp", "resnet32-acgan"],
)
def test_compiled_losses_train_as_the_eager_step(setting) -> None:
    assert_equivalent(trained(*setting), trained(*setting, *AOT))


def test_compiled_losses_with_drift_lazy_penalty_and_diffaugment() -> None:
    """The objective's other terms, the lazy penalty's host-side clock (two compiled losses, no recompiles) and the
    generator's DiffAugment, which runs eagerly between compiled graphs with the eager run's random draws."""
    options = ("loss.drift=0.001", "loss.lazy_penalty=2", "data.augment=color,translation,cutout")
    eager, compiled = trained(*CONV, *options), trained(*CONV, *options, *AOT)
    assert_equivalent(eager, compiled, graphs=4)  # the critic loss with and without the penalty; G, then D
    critic_loss = compiled[0].parts.critic_loss
    assert isinstance(critic_loss, CompiledCriticLoss) and compiled[0].parts.clock.critic == STEPS * 2
    assert "penalty" in compiled[1][0]  # every other critic step paid


def test_the_tolerances_catch_a_real_change() -> None:
    """Control: lambda 10 -> 10.01 in the compiled run fails each comparison on its own (measured: losses 9e-3,
    weights 5e-6), else a tolerance is too loose to mean much."""
    losses, weights = differences(trained(*CONV), trained(*CONV, *AOT, "loss.gp_weight=10.01"))
    assert losses > LOSS_TOL and weights > WEIGHT_TOL, (losses, weights)


def test_compiled_penalty_stays_float32_under_bf16() -> None:
    """Inside the compiled loss the penalty runs in float32 with autocast off, the main pass in bf16: its per-sample
    gradient norms equal the eager step's (fp32) to 1e-5 (measured: exactly), while the same compiled loss with the
    penalty through the prepared critic, whose forward Accelerate wrapped in autocast, is off by 1e-2."""
    setting = (*CONV, "train.precision=bf16", "speed.channels_last=false")
    t = trained(*setting, *AOT, steps=0)[0]
    eager = trained(*setting, steps=0)[0]
    real, labels, z, eps = t.inputs.critic()
    fake = t.parts.generator_raw(z, labels).float()
    _, ours = t.parts.critic_loss(real, fake, labels, eps)
    _, want = eager.parts.critic_loss(real, fake, labels, eps)
    critic = t.parts.update_critic.module  # prepared: Accelerate's autocast forward
    naive_penalty = replace(t.penalty, forward=critic)
    naive_objective = replace(t.parts.objective, critic_terms=[naive_penalty])
    _, naive = CompiledCriticLoss(joint_pass(critic), naive_objective, naive_penalty, "aot_eager")(
        real, fake, labels, eps
    )
    error, naive_error = (((s["grad_norm"] - want["grad_norm"]) / want["grad_norm"]).abs().max() for s in (ours, naive))
    assert error < 1e-5 and naive_error > 1e-3, (error, naive_error)
    assert t.penalty.forward.func is fp32_forward


@pytest.mark.slow  # a C++ build of inductor's kernels: ~1 min of CI; aot_eager covers the loss's compile path
def test_inductor_compiled_losses_train_as_the_eager_step() -> None:
    """Inductor's fused C++ kernels: the same run to 1e-5/1e-6 (measured 1e-6 and 2e-8; 34 s on 2 cores with a cold
    inductor cache, 18 s warm)."""
    assert_equivalent(trained(*CONV), trained(*CONV, "speed.compile=true", "speed.compile_backend=inductor"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("speed.compile_scope=graph",), "speed.compile_scope='graph' is not a valid choice"),
        (("speed.compile=true", "train.deepspeed=2"), "Under DeepSpeed use speed.compile_scope=modules"),
        (
            (
                "speed.compile=true",
                "speed.compile_backend=cudagraphs",
                "speed.cuda_graph=true",
                "speed.fused_adam=true",
            ),
            "speed.cuda_graph=true cannot run with speed.compile_backend=cudagraphs",
        ),
    ],
)
def test_compile_settings_are_checked(overrides, message) -> None:
    with pytest.raises(TrainerError, match=re.escape(message)):
        configure(None, overrides)
    assert configure(None, ("speed.compile=true", "train.deepspeed=2", "speed.compile_scope=modules"))


def test_compiled_losses_under_two_process_ddp(tmp_path: Path) -> None:
    """Under DDP (gloo, 2 processes) the critic's main pass goes through the DDP module, whose pre-forward breaks the
    compiled loss into pieces; its reducer still all-reduces the whole gradient, penalty included: the same metrics
    as the eager 2-process run (measured: identical) and replicas that agree."""
    args = (*TINY, "train.steps=3", "train.cpu_threads=1")
    ok(torchrun_train(2, f"run.dir={tmp_path / 'eager'}", *args))
    ok(torchrun_train(2, f"run.dir={tmp_path / 'compiled'}", *args, *AOT))
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    for a, b in zip(eager, compiled, strict=True):
        for key in ("loss_d", "loss_g", "penalty", "grad_norm", "wasserstein"):
            assert a[key] == pytest.approx(b[key], abs=LOSS_TOL), (key, a[key], b[key])
    state = json.loads(next((tmp_path / "compiled" / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert state["world_size"] == 2 and state["fingerprints"][0] == state["fingerprints"][1]


@pytest.mark.parametrize("scope", ["loss", "modules"])
def test_compiled_losses_inside_the_emulated_cuda_graph(monkeypatch, capsys, scope) -> None:
    """speed.cuda_graph with speed.compile: the compiled functions run eagerly during the warm-up (where dynamo and
    aot_autograd trace), are captured with the rest of the iteration and replayed; the CPU emulation of a graph
    (tests/graph_emulation.py) replays the captured operators without Python, and the run equals the eager one bit
    for bit. aot_eager runs its traced operators through the dispatcher, where the emulation records them (inductor's
    CPU kernels bypass it: a real capture of inductor's GPU kernels is for tests/gpu_checks.sh)."""
    import test_graph_semantics as semantics
    from graph_emulation import EmulatedBackend

    from trainer.accel import cuda_graph

    backend = EmulatedBackend()
    monkeypatch.setattr(cuda_graph, "BACKEND", backend)
    eager = semantics._run()
    AcceleratorState._reset_state(reset_partial_state=True)
    graphed = semantics._run("speed.cuda_graph=true", *AOT, f"speed.compile_scope={scope}")
    assert "capture failed" not in capsys.readouterr().out
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    # 3 warm-up steps, then the capture and the replays
    assert len(backend.graphs) == 1 and backend.graphs[0].replays == semantics.STEPS - 3
    semantics._same(eager, graphed)
