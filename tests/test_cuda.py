"""CUDA-only paths: the CUDA-graph step equals the eager one, and train.py runs with it. Skipped without a GPU;
tests/gpu_checks.sh runs them (with the precision tests) on a GPU machine."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY, ok, python_train, read_metrics, run_cmd

from trainer.accel.runtime import raw_module
from trainer.bench.race import TrainerStep, bench_images
from trainer.core.gate import configure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = ("model.width=16", "model.z_dim=16", "train.batch_size=32", "train.n_critic=3", "seed=5")
STEPS = 7  # 3 eager warm-up steps, the captured step, 3 replays


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _run(*overrides: str) -> tuple[list[tuple[float, float]], torch.Tensor, torch.Tensor | None]:
    cfg = configure(None, (*SMALL, *overrides))
    trainer = TrainerStep(cfg, bench_images(cfg, 0))
    p, losses = trainer.training, []
    for _ in range(STEPS):
        trainer.step()
        record = p.stats.reduce(trainer.accelerator)
        losses.append((record["loss_d"], record["loss_g"]))
    torch.cuda.synchronize()
    weights = torch.cat(
        [q.detach().float().flatten() for n in (p.parts.generator, p.parts.critic) for q in raw_module(n).parameters()]
    )
    ema = torch.cat([q.detach().flatten() for q in p.ema.parameters()]) if p.ema is not None else None
    return losses, weights, ema


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_cuda_graph_step_equals_eager(precision: str) -> None:
    """Same data and noise order, same kernels: the graphed run follows the eager one step for step (cuDNN's
    backward kernels are not bit-reproducible, hence a tolerance), EMA included."""
    eager = _run(f"train.precision={precision}", "speed.fused_adam=true")
    graphed = _run(f"train.precision={precision}", "speed.cuda_graph=true")
    (le, we, ee), (lg, wg, eg) = eager, graphed
    assert torch.tensor(lg) == pytest.approx(torch.tensor(le), rel=1e-3, abs=1e-4)
    assert ((wg - we).norm() / we.norm()).item() < 1e-4
    assert ((eg - ee).norm() / ee.norm()).item() < 1e-4
    # Control: lambda 10 -> 11 moves the losses ~10% and the weights ~6e-4 (measured on CPU), past both tolerances.
    control = _run(f"train.precision={precision}", "speed.cuda_graph=true", "loss.gp_weight=11")
    assert torch.tensor(control[0]) != pytest.approx(torch.tensor(le), rel=1e-3, abs=1e-4)
    assert ((control[1] - we).norm() / we.norm()).item() > 1e-4


def test_train_py_with_cuda_graph_resumes(run_dir: Path) -> None:
    args = (f"run.dir={run_dir}", *TINY, "train.precision=bf16", "speed.cuda_graph=true", "log.every=3")
    ok(python_train(*args, "train.steps=9", "checkpoint.every=6"))
    ok(python_train(*args, "train.steps=12", "run.resume=latest"))
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [3, 6, 9, 12]
    assert all(math.isfinite(m["loss_d"]) and math.isfinite(m["penalty"]) for m in metrics)
    assert all(m["skipped_updates"] == 0 and m["lr_d"] > 0 for m in metrics)


def _torchrun_one_gpu_under_ddp(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 1` with NCCL and DDP forced around the networks (tests/faulty_train.py): DDP's
    reducer and NCCL's all-reduce kernels run (and are captured) as with several GPUs."""
    args = (f"run.dir={run_dir}", *TINY, "train.precision=bf16", "log.every=8", "checkpoint.every=16", *extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    return run_cmd([*cmd, "tests/faulty_train.py", *args], env={"WGAN_GP_FORCE_DDP": "1"})


def test_cuda_graph_under_ddp_with_nccl_captures_the_all_reduce_and_resumes(tmp_path: Path) -> None:
    """PyTorch's DDP + CUDA graphs recipe on one GPU: 11 warm-ups, the capture at step 13, replays, a checkpoint,
    a resume that captures again; the job follows the eager DDP job to cuDNN's rounding."""
    eager, graphed = tmp_path / "eager", tmp_path / "graphed"
    ok(_torchrun_one_gpu_under_ddp(eager, "train.steps=32"))
    first = ok(_torchrun_one_gpu_under_ddp(graphed, "train.steps=16", "speed.cuda_graph=true"))
    second = ok(_torchrun_one_gpu_under_ddp(graphed, "train.steps=32", "speed.cuda_graph=true", "run.resume=latest"))
    for proc in (first, second):
        assert "capture failed" not in proc.stdout
        assert "[force-ddp] rank 0: 2 DDP modules in the graph, 2 replays" in proc.stdout
    keys = ("loss_d", "loss_g", "penalty", "wasserstein")
    want, got = ([m[k] for m in read_metrics(run) for k in keys] for run in (eager, graphed))
    assert [m["step"] for m in read_metrics(graphed)] == [8, 16, 24, 32]
    assert torch.tensor(got) == pytest.approx(torch.tensor(want), rel=1e-2, abs=1e-3)
