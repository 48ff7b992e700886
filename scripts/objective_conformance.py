"""Measured errors of the zero-centred objectives against their closed forms and references (the figures the tests
bound): python scripts/objective_conformance.py. Prints one JSON line per check, the largest absolute and relative
errors seen; tests/test_objectives.py asserts the bounds."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_objectives as t  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    diff = (got.double() - want.double()).abs()
    return diff.max().item(), (diff / want.double().abs().clamp_min(1e-30)).max().item()


def report(check: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    worst = [errors(g, w) for g, w in pairs]
    print(json.dumps({"check": check, "max_abs": max(a for a, _ in worst), "max_rel": max(r for _, r in worst)}))


def closed_forms() -> None:
    critic, real, fake = t.Linear(12), torch.randn(16, 3, 2, 2), torch.randn(16, 3, 2, 2)
    for at in ("real", "fake"):
        critic.zero_grad()
        value, _ = t.zero_centred(critic, at)(t.batch(real, fake))
        value.backward()
        w = critic.w.detach()
        report(f"linear critic, {at}: value vs gamma/2 ||w||^2, grad vs gamma w",
               [(value.detach(), t.GAMMA / 2 * w.pow(2).sum()), (critic.w.grad, t.GAMMA * w)])  # fmt: skip
    critic = t.Quadratic()
    for at, x in (("real", real), ("fake", fake)):
        critic.zero_grad()
        value, _ = t.zero_centred(critic, at)(t.batch(real, fake))
        value.backward()
        a, mean_sq = critic.a.detach(), x.flatten(1).pow(2).sum(1).mean()
        report(f"quadratic critic, {at}: value vs gamma/2 a^2 E||x||^2, grad vs gamma a E||x||^2",
               [(value.detach(), t.GAMMA / 2 * a**2 * mean_sq), (critic.a.grad, t.GAMMA * a * mean_sq)])  # fmt: skip


def ddp() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               f"run.dir={run_dir}", f"seed={t.SEED}", "data.name=8gaussians", "model.name=toy", f"model.z_dim={t.Z}",
               f"model.width={t.WIDTH}", f"train.batch_size={t.B}", "train.n_critic=1", "train.steps=1",
               "loss.name=r3gan", f"loss.gamma={t.GAMMA}", "train.ema_decay=0", "optim.name=sgd",
               f"optim.lr_d={t.LR}", f"optim.lr_g={t.LR}", "log.every=1", "log.sample_every=0", "checkpoint.every=0",
               "eval.at_end=false", "log.tracker=none"]  # fmt: skip
        env = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        ckpt = run_dir / "checkpoints" / "step-00000001"
        got_gen, got_critic = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "model_1.safetensors"))
    want_gen, want_critic = t._reference_r3gan_step(t.GAMMA)
    pairs = [(got_critic[k], v) for k, v in want_critic.items()] + [(got_gen[k], v) for k, v in want_gen.items()]
    report("r3gan, 2-process gloo DDP step vs one process on the concatenated batch (weights)", pairs)
    _, without_r2 = t._reference_r3gan_step(0.0)
    report("control: the same reference without R1/R2 (must be far larger)",
           [(without_r2[k], v) for k, v in want_critic.items()])  # fmt: skip


if __name__ == "__main__":
    closed_forms()
    ddp()
