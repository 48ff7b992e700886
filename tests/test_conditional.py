"""Class-conditional (AC-GAN) training and the learning-rate schedule through the real train.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ok, python_train, read_metrics, run_cmd
from safetensors.torch import load_file

COND = [
    "data.name=digits", "data.image_size=32", "model.name=resnet32", "model.width=8", "model.z_dim=16",
    "model.conditional=true", "train.batch_size=8", "train.batch_size_g=12", "train.n_critic=2", "log.every=1",
    "log.sample_every=0", "checkpoint.every=0", "optim.schedule=linear", "train.ema_decay=0.9",
]  # fmt: skip


def test_conditional_run_logs_class_accuracy_and_decays_lr(run_dir: Path, tmp_path: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *COND))
    metrics = read_metrics(run_dir)
    assert all(0 <= m["acc_real"] <= 1 and 0 <= m["acc_fake"] <= 1 for m in metrics)
    # linear decay to 0 over train.steps: the rate used at step s (1-based) is base * (1 - (s - 1) / steps)
    assert [m["lr_d"] for m in metrics] == pytest.approx([1e-4, 5e-5]) and metrics[1]["lr_g"] == pytest.approx(5e-5)
    assert metrics[-1]["images_seen"] == 2 * 2 * 8
    out = tmp_path / "s.npy"
    ok(run_cmd([sys.executable, "-m", "trainer.sample", str(run_dir), "--num", "20", "--out", str(out)]))
    samples = np.load(out)
    assert samples.shape == (20, 1, 32, 32) and np.abs(samples).max() <= 1


def test_conditional_resume_with_schedule_is_bitwise(tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(python_train(f"run.dir={straight}", "train.steps=2", *COND))
    ok(python_train(f"run.dir={split}", "train.steps=1", *COND))
    # resume from the step-1 checkpoint (an explicit path) into a new run folder
    first = split / "checkpoints" / "step-00000001"
    resumed = tmp_path / "resumed"
    ok(python_train(f"run.dir={resumed}", "train.steps=2", f"run.resume={first}", *COND))
    a = load_file(str(straight / "checkpoints/step-00000002/model_1.safetensors"))
    b = load_file(str(resumed / "checkpoints/step-00000002/model_1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["lr_d"] for m in read_metrics(resumed)] == [m["lr_d"] for m in read_metrics(straight)][1:]


def test_a_run_trained_in_chunks_on_one_horizon_is_the_run_trained_in_one_go(tmp_path: Path) -> None:
    """train.schedule_steps fixes the linear schedule's span, so a run extended chunk by chunk (run.resume=latest
    with a higher train.steps, as trainer.converged does) follows the schedule of a run trained in one go."""
    straight, chunked, unfixed = tmp_path / "straight", tmp_path / "chunked", tmp_path / "unfixed"
    ok(python_train(f"run.dir={straight}", "train.steps=3", *COND))
    ok(python_train(f"run.dir={chunked}", "train.steps=2", "train.schedule_steps=3", *COND))
    ok(python_train(f"run.dir={chunked}", "train.steps=3", "train.schedule_steps=3", "run.resume=latest", *COND))
    ok(python_train(f"run.dir={unfixed}", "train.steps=2", *COND))
    a = load_file(str(straight / "checkpoints/step-00000003/model_1.safetensors"))
    b = load_file(str(chunked / "checkpoints/step-00000003/model_1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rates = [m["lr_d"] for m in read_metrics(straight)]
    assert rates == pytest.approx([1e-4, 1e-4 * 2 / 3, 1e-4 / 3])  # 1 - (s - 1) / 3 at step s
    assert [m["lr_d"] for m in read_metrics(chunked)] == rates
    assert [m["lr_d"] for m in read_metrics(unfixed)] == pytest.approx([1e-4, 5e-5])  # the control: its own span
