"""speed.cuda_graph under DDP on the CPU: a real 2-process gloo job (torchrun) whose generator iterations are captured
with DDP's all-reduces inside (tests/graph_emulation.py replays the recorded operators, collectives included, without
rerunning Python), against the same job run eagerly. The GPU side (NCCL, one process under DDP) is in
tests/test_cuda.py, run by tests/gpu_checks.sh."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY, ok, read_metrics, torchrun_train

# log.every=8: steps 8, 16, 24, 32 are timed (run eagerly, phase timers); the other steps go through the graph
# wrapper: 11 eager warm-ups (DDP_WARMUP), the capture at step 13 (29 after the resume), then replays.
ARGS = (*TINY, "log.every=8", "speed.fused_adam=true", "seed=3")
KEYS = ("loss_d", "loss_g", "penalty", "grad_norm", "grad_norm_max", "wasserstein", "d_real")
EMULATE = {"WGAN_GP_EMULATE_CUDA_GRAPH": "1"}


@pytest.fixture(scope="module")
def eager(tmp_path_factory) -> list[dict]:
    """The eager 2-process job, 32 steps."""
    run_dir = tmp_path_factory.mktemp("eager") / "run"
    proc = ok(torchrun_train(2, f"run.dir={run_dir}", *ARGS, "train.steps=32"))
    assert "Warning" not in proc.stderr  # DDP's stride warning on conv-small's one-channel NHWC weight is not shown
    return read_metrics(run_dir)


def _values(metrics: list[dict]) -> list[list[float]]:
    return [[m["step"], *(m[k] for k in KEYS)] for m in metrics]


def _replays(stdout: str) -> list[int]:
    return sorted(int(line.split()[-2]) for line in stdout.splitlines() if line.startswith("[emulated graph]"))


def _rank_fingerprints(run_dir: Path, step: int) -> list[dict]:
    state = run_dir / "checkpoints" / f"step-{step:08d}" / "trainer_state.json"
    return json.loads(state.read_text())["fingerprints"]


def test_graphed_ddp_job_equals_the_eager_one_bit_for_bit_across_a_resume(run_dir: Path, eager: list[dict]) -> None:
    """Capture at step 13, replays, a checkpoint at 16, a resume that warms up and captures again (step 29): every
    logged value equals the eager job's, and both processes hold the same weights (the all-reduce was replayed)."""
    args = (f"run.dir={run_dir}", *ARGS, "speed.cuda_graph=true")
    first = ok(torchrun_train(2, *args, "train.steps=16", "checkpoint.every=16", env_extra=EMULATE))
    second = ok(
        torchrun_train(2, *args, "train.steps=32", "checkpoint.every=16", "run.resume=latest", env_extra=EMULATE)
    )
    assert "capture failed" not in first.stdout + second.stdout
    # 11 warm-ups (PyTorch's DDP recipe), so the capture is step 13 and the replays 14-15, then 30-31 after the resume
    assert _replays(first.stdout) == _replays(second.stdout) == [2, 2]
    graphed = read_metrics(run_dir)
    assert [m["world_size"] for m in graphed] == [2] * 4
    assert _values(graphed) == _values(eager)
    ranks = _rank_fingerprints(run_dir, 32)
    assert len(ranks) == 2 and ranks[0] == ranks[1]


def test_the_emulation_sees_a_graph_without_its_all_reduces(run_dir: Path, eager: list[dict]) -> None:
    """Control: the same job with the collectives left out of the recording. The replayed steps then update each
    process with its own gradients: the processes' weights part and the logged values leave the eager job's."""
    env = {"WGAN_GP_EMULATE_CUDA_GRAPH": "drop-collectives"}
    proc = ok(torchrun_train(2, f"run.dir={run_dir}", *ARGS, "speed.cuda_graph=true", "train.steps=24", env_extra=env))
    assert _replays(proc.stdout) == [9, 9]  # steps 14-15 and 17-23
    graphed = read_metrics(run_dir)
    assert _values(graphed)[0] == _values(eager)[0]  # step 8: before the capture
    assert _values(graphed)[2] != _values(eager)[2]  # step 24: after 9 replays without the all-reduce
    ranks = _rank_fingerprints(run_dir, 24)
    assert ranks[0]["critic"] != ranks[1]["critic"]


@pytest.fixture
def one_process_group(monkeypatch):
    """A 1-process gloo group, so that DDP can wrap a module in this process."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29_400 + os.getpid() % 500))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("static_graph", [False, True])
def test_ddp_without_the_recipe_is_refused_with_the_way_out(one_process_group, monkeypatch, static_graph) -> None:
    """The recipe's settings are checked before any warm-up: async error handling unset, or a DDP module built
    without static_graph, is refused with a message naming the setting (make_accelerator sets both)."""
    from graph_emulation import EmulatedBackend
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from trainer.accel import cuda_graph
    from trainer.errors import TrainerError

    monkeypatch.setattr(cuda_graph, "BACKEND", EmulatedBackend())
    ddp = cuda_graph.ddp_modules((nn.Linear(2, 1), DistributedDataParallel(nn.Linear(2, 2), static_graph=static_graph)))
    assert len(ddp) == 1
    monkeypatch.setenv(cuda_graph.ASYNC_ERROR_HANDLING, "1")
    with pytest.raises(TrainerError, match="TORCH_NCCL_ASYNC_ERROR_HANDLING=0 before the process group starts"):
        cuda_graph.check_runtime("cpu", ddp)
    monkeypatch.setenv(cuda_graph.ASYNC_ERROR_HANDLING, "0")
    if static_graph:
        cuda_graph.check_runtime("cpu", ddp)  # the recipe is met
    else:
        with pytest.raises(TrainerError, match=r"needs DDP's static graph"):
            cuda_graph.check_runtime("cpu", ddp)


def test_one_process_under_ddp_is_graphed_as_on_one_gpu(tmp_path: Path) -> None:
    """World size 1 with DDP forced around the networks (what tests/test_cuda.py runs with NCCL on one GPU): the
    graph holds both DDP modules, replays 6 steps, and the job logs the eager job's values exactly."""
    runs = {}
    for name, extra, env in (("eager", (), {}), ("graphed", ("speed.cuda_graph=true",), EMULATE)):
        run_dir = tmp_path / name
        args = (f"run.dir={run_dir}", *TINY, "log.every=10", "speed.fused_adam=true", "train.steps=20", *extra)
        proc = ok(torchrun_train(1, *args, env_extra={"WGAN_GP_FORCE_DDP": "1", **env}))
        runs[name] = (proc.stdout, read_metrics(run_dir))
    assert "[force-ddp] rank 0: 2 DDP modules in the graph, 6 replays" in runs["graphed"][0]
    assert _values(runs["graphed"][1]) == _values(runs["eager"][1])
