"""A real 2-process gloo job (torchrun + ACCELERATE_USE_CPU=1) against one process on the concatenated batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import TINY, ok, read_metrics, run_cmd, torchrun_train
from safetensors.torch import load_file

from trainer.data.toys import eight_gaussians
from trainer.nets.models import build_models

SEED, BATCH, Z, WIDTH, LR, LAMBDA = 3, 8, 2, 16, 0.05, 10.0


def _reference_step() -> tuple[dict, dict]:
    """One critic step then one generator step, plain autograd and SGD on both processes' batches concatenated.

    Process r seeds torch with SEED + r and draws, in order: real points, critic noise, interpolation weights, then
    generator noise; the same initial weights come from SEED on every process.
    """
    torch.manual_seed(SEED)
    gen, critic = build_models("toy", Z, WIDTH, 0, 8)
    draws = []
    for rank in range(2):
        torch.manual_seed(SEED + rank)
        draws.append((eight_gaussians(BATCH), torch.randn(BATCH, Z), torch.rand(BATCH), torch.randn(BATCH, Z)))
    real, z, eps, z_gen = (torch.cat(parts) for parts in zip(*draws, strict=True))
    fake = gen(z).detach()
    x_hat = (eps[:, None] * real + (1 - eps[:, None]) * fake).requires_grad_(True)
    (grad_x,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    penalty = ((grad_x.norm(dim=1) - 1) ** 2).mean()
    loss_d = critic(fake).mean() - critic(real).mean() + LAMBDA * penalty
    grads = torch.autograd.grad(loss_d, list(critic.parameters()))
    with torch.no_grad():
        for param, grad in zip(critic.parameters(), grads, strict=True):
            param -= LR * grad
    loss_g = -critic(gen(z_gen)).mean()
    grads = torch.autograd.grad(loss_g, list(gen.parameters()))
    with torch.no_grad():
        for param, grad in zip(gen.parameters(), grads, strict=True):
            param -= LR * grad
    return gen.state_dict(), critic.state_dict()


def test_two_processes_equal_one_process_on_concatenated_batch(run_dir: Path) -> None:
    ok(
        torchrun_train(
            2, f"run.dir={run_dir}", f"seed={SEED}", "data.name=8gaussians", "model.name=toy", f"model.z_dim={Z}",
            f"model.width={WIDTH}", f"train.batch_size={BATCH}", "train.n_critic=1", "train.steps=1",
            "train.ema_decay=0", "optim.name=sgd", f"optim.lr_d={LR}", f"optim.lr_g={LR}", f"loss.gp_weight={LAMBDA}",
            "log.every=1", "log.sample_every=0", "checkpoint.every=0", "log.num_samples=200",
        )
    )  # fmt: skip
    assert read_metrics(run_dir)[0]["world_size"] == 2
    ckpt = run_dir / "checkpoints" / "step-00000001"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["fingerprints"]) == 2
    assert state["fingerprints"][0] == state["fingerprints"][1]  # both replicas hold identical parameters
    want_gen, want_critic = _reference_step()
    got_gen, got_critic = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "model_1.safetensors"))
    initial_gen, initial_critic = build_models("toy", Z, WIDTH, 0, 8) if torch.manual_seed(SEED) else (None, None)
    for want, got, init in ((want_critic, got_critic, initial_critic), (want_gen, got_gen, initial_gen)):
        for key, value in want.items():
            if key.endswith("weight"):  # (the critic's output bias gets no gradient from a Wasserstein loss)
                assert not torch.equal(value, init.state_dict()[key]), f"{key} did not move: the test is vacuous"
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert (run_dir / "samples" / "step-00000001.png").is_file()


def test_two_process_image_run_keeps_replicas_identical(run_dir: Path) -> None:
    ok(torchrun_train(2, f"run.dir={run_dir}", "train.steps=3", *TINY))
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3] and {m["world_size"] for m in metrics} == {2}
    assert metrics[-1]["images_seen"] == 3 * 2 * 16 * 2  # steps x n_critic x batch x processes
    state = json.loads((run_dir / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["fingerprints"][0] == state["fingerprints"][1]


def test_world_size_mismatch_is_refused(run_dir: Path) -> None:
    """`accelerate launch --multi_gpu` without GPUs starts independent single-process runs: each must stop."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no"]
    proc = run_cmd([__import__("sys").executable, *launch, "--dynamo_backend", "no", "train.py", f"run.dir={run_dir}"])
    if torch.cuda.device_count() >= 2:
        return  # a real multi-GPU machine: the launch is legitimate
    assert proc.returncode != 0
    assert "WORLD_SIZE=2" in proc.stderr and "torchrun --nproc_per_node 2" in proc.stderr
    assert not (run_dir / "checkpoints").exists()


def test_a_finished_run_leaves_its_process_group(tmp_path: Path) -> None:
    """train.py destroys the process group after a good run or a stop (NCCL asks for it: pytorch/pytorch#190489);
    with no group it does nothing."""
    from trainer.accel.runtime import leave_process_group

    leave_process_group()  # no group: nothing to do
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    leave_process_group()
    assert not torch.distributed.is_initialized()


def test_a_job_process_exits_with_its_code_while_gloo_still_frees_the_last_collective() -> None:
    """The CI failure of a finished 2-rank job (SIGABRT at exit, "terminate called without an active exception"):
    gloo's worker thread frees the last collective's tensor while the interpreter finalises. tests/gloo_exit_probe.py
    holds that thread inside Python across the start of finalisation: leaving with sys.exit aborts both processes
    (the control), leaving with exit_process ends both with their code, after their non-daemon thread and atexit
    handler ran."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    plain = run_cmd([*launch, "tests/gloo_exit_probe.py", "plain", "0"])
    assert plain.returncode != 0 and "SIGABRT" in plain.stderr, plain.stderr[-2000:]
    fixed = ok(run_cmd([*launch, "tests/gloo_exit_probe.py", "exit_process", "0"]))
    for rank in (0, 1):
        assert f"rank {rank}: thread finished" in fixed.stdout and f"rank {rank}: atexit ran" in fixed.stdout
    assert "terminate called" not in fixed.stderr


def test_exit_process_flushes_and_keeps_the_code_in_a_job_and_outside_one() -> None:
    """In a job (WORLD_SIZE set) the process leaves by os._exit after the atexit handlers and a flush of stdout (an
    unterminated line survives); outside one it is sys.exit. Both keep the exit code."""
    code = (
        "import atexit; from trainer.accel.shutdown import exit_process; "
        "atexit.register(lambda: print(' atexit', end='')); print('unterminated', end=''); exit_process(3)"
    )
    for world in ("2", None):
        proc = run_cmd([sys.executable, "-c", code], env={"WORLD_SIZE": world} if world else None)
        assert proc.returncode == 3 and proc.stdout == "unterminated atexit", (world, proc.stdout, proc.stderr)
