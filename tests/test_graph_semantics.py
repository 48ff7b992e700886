"""speed.cuda_graph's logic on the CPU: graph_emulation.EmulatedGraph replays the captured operators on the same
tensors without rerunning Python, as a CUDA graph does, so a value frozen at capture shows up as a wrong result."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY, ok, python_train, read_metrics
from graph_emulation import EmulatedBackend

from trainer.accel import cuda_graph
from trainer.accel.runtime import make_accelerator, raw_module
from trainer.bench.race import TrainerStep, bench_images
from trainer.core.build import build
from trainer.core.gate import configure
from trainer.core.loop import train_step

BASE = (
    "model.width=8", "model.z_dim=16", "train.batch_size=16", "train.n_critic=2", "seed=7", "train.cpu=true",
    "train.cpu_threads=1", "speed.fused_adam=true", "optim.schedule=linear", "train.steps=8",
)  # fmt: skip
STEPS = 7  # 3 eager warm-up steps, the captured step, 3 replays


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr(cuda_graph, "BACKEND", EmulatedBackend())
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _run(*overrides: str, timed: tuple[int, ...] = ()) -> tuple[list, torch.Tensor, torch.Tensor]:
    cfg = configure(None, (*BASE, *overrides))
    trainer = TrainerStep(cfg, bench_images(cfg, 0))
    t, records = trainer.training, []
    for step in range(STEPS):
        trainer.step(timed=step in timed)  # as run_loop does on log steps: phase timings, run eagerly
        records.append(t.stats.reduce(trainer.accelerator))
    nets = (raw_module(t.parts.generator), t.parts.critic)
    weights = torch.cat([q.detach().flatten() for net in nets for q in net.parameters()])
    return records, weights, torch.cat([q.flatten() for q in t.ema.parameters()])


def _same(a, b) -> None:
    (ra, wa, ea), (rb, wb, eb) = a, b
    keys = ("loss_d", "loss_g", "penalty", "grad_norm", "grad_norm_max", "wasserstein")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    assert torch.equal(wa, wb) and torch.equal(ea, eb)


def test_graphed_steps_equal_eager_ones_bit_for_bit() -> None:
    """Warm-up, capture and replays with a decaying learning rate and an EMA: the very same numbers as eager."""
    eager = _run()
    graphed = _run("speed.cuda_graph=true")
    _same(eager, graphed)


def test_timed_eager_steps_between_replays_keep_the_graph_right() -> None:
    """Log steps run eagerly (phase timers); the replays after them still use the current weights and states."""
    _same(_run(), _run("speed.cuda_graph=true", timed=(2, 5)))


def test_the_emulation_catches_a_value_frozen_at_capture(monkeypatch) -> None:
    """Control: a float learning rate (not written into the device tensor) is frozen into the graph; the emulated
    replays then train with the capture step's rate and the run departs from the eager one."""
    monkeypatch.setattr(cuda_graph.GraphedIteration, "_lr_to_device", lambda self: None)
    eager = _run()
    frozen = _run("speed.cuda_graph=true")
    assert not torch.equal(eager[1], frozen[1])


def test_a_host_sync_inside_the_capture_is_refused(monkeypatch, capsys) -> None:
    """The recorder refuses .item() and random draws, as a CUDA capture fails on them (the run then goes on eagerly:
    the next test; here the emulation had already run the step's operators, so only the refusal is checked)."""
    original = cuda_graph.GraphedIteration._capture

    def capture_with_sync(self, step):
        def with_sync():
            records = step()
            float(self.feed.real.sum())  # .item() underneath: a host sync
            return records

        return original(self, with_sync)

    monkeypatch.setattr(cuda_graph.GraphedIteration, "_capture", capture_with_sync)
    _run("speed.cuda_graph=true")
    assert "a host sync or a random draw cannot be replayed" in capsys.readouterr().out


def test_train_py_with_emulated_graph_checkpoints_and_resumes(run_dir: Path) -> None:
    env = {"WGAN_GP_EMULATE_CUDA_GRAPH": "1"}
    args = (f"run.dir={run_dir}", *TINY, "speed.cuda_graph=true", "speed.fused_adam=true", "log.every=3")
    ok(python_train(*args, "train.steps=9", "checkpoint.every=6", env=env))
    ok(python_train(*args, "train.steps=12", "run.resume=latest", env=env))
    straight = run_dir.parent / "straight"
    ok(python_train(f"run.dir={straight}", *TINY, "speed.fused_adam=true", "log.every=3", "train.steps=12"))
    graphed, eager = read_metrics(run_dir), read_metrics(straight)
    assert [m["step"] for m in graphed] == [3, 6, 9, 12]
    assert all(math.isfinite(m["loss_d"]) and m["lr_d"] > 0 for m in graphed)
    assert [m["loss_d"] for m in graphed] == [m["loss_d"] for m in eager]


def test_a_nan_batch_is_skipped_inside_the_graph_as_outside() -> None:
    """NaN images in step 5's critic batches (a replay): both critic updates are skipped on the device, counted,
    and the weights stay those of the eager run, which skips the same two."""

    def run(*overrides: str) -> tuple[int, torch.Tensor]:
        AcceleratorState._reset_state(reset_partial_state=True)
        cfg = configure(None, (*BASE, *overrides))
        trainer = TrainerStep(cfg, bench_images(cfg, 0))
        t, draw, calls = trainer.training, trainer.training.batches.next, [0]

        def poisoned() -> torch.Tensor:
            calls[0] += 1
            batch = draw()
            return batch * float("nan") if calls[0] in (9, 10) else batch  # step 5 of 7, n_critic 2

        t.batches.next = poisoned
        for _ in range(STEPS):
            trainer.step()
        nets = (raw_module(t.parts.generator), t.parts.critic)
        return t.guard.total, torch.cat([q.detach().flatten() for net in nets for q in net.parameters()])

    (skipped_eager, eager), (skipped_graph, graphed) = run(), run("speed.cuda_graph=true")
    assert skipped_eager == skipped_graph == 2
    assert torch.equal(eager, graphed) and torch.isfinite(graphed).all()


def test_a_failed_capture_goes_on_eagerly_with_the_same_math(monkeypatch, capsys) -> None:
    """A capture that raises (a driver, an operator that cannot be captured) warns once; the run is the eager run."""

    def refuse(graph):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph.BACKEND, "capture", refuse)
    graphed = _run("speed.cuda_graph=true")
    assert capsys.readouterr().out.count("the capture failed (CUDA error: operation not permitted") == 1
    _same(_run(), graphed)


def test_a_conditional_model_is_graphed_bit_for_bit(capsys) -> None:
    """AC-GAN: the class labels of each critic batch and the generator's uniform labels are fed from fixed buffers
    too, so a conditional run graphs to the very same numbers (class accuracies included)."""

    def run(*overrides: str) -> tuple[list, torch.Tensor]:
        AcceleratorState._reset_state(reset_partial_state=True)
        cfg = configure(None, (*CONDITIONAL, *overrides))
        accelerator = make_accelerator(cfg)
        t, records = build(cfg, accelerator), []
        for _ in range(STEPS):
            train_step(t)
            records.append(t.stats.reduce(accelerator))
        nets = (raw_module(t.parts.generator), t.parts.critic)
        if t.graph is not None:  # captured at step 4, replayed for the last 3 steps
            assert t.graph.graph.replays == STEPS - t.graph.warmup
        return records, torch.cat([q.detach().flatten() for net in nets for q in net.parameters()])

    (eager, we), (graphed, wg) = run(), run("speed.cuda_graph=true")
    assert "capture failed" not in capsys.readouterr().out
    keys = ("loss_d", "loss_g", "penalty", "acc_real", "acc_fake", "wasserstein")
    assert [[r[k] for k in keys] for r in eager] == [[r[k] for k in keys] for r in graphed]
    assert torch.equal(we, wg)


CONDITIONAL = (
    "model.name=resnet32", "model.width=8", "model.z_dim=16", "data.image_size=32", "model.conditional=true",
    "train.batch_size=8", "train.n_critic=2", "seed=11", "train.cpu=true", "train.cpu_threads=1",
    "speed.fused_adam=true", "train.ema_decay=0", "train.steps=8",
)  # fmt: skip
