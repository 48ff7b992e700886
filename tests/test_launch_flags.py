"""accelerate launch's --dynamo_backend (mapped onto speed.compile) and --gradient_accumulation_steps (refused),
through the real `accelerate launch`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import TINY, ok, python_train, read_metrics, run_cmd
from omegaconf import OmegaConf

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no"]


def launch(*flags: str, args: tuple[str, ...]) -> object:
    return run_cmd([*LAUNCH, *flags, "train.py", *args])


def test_dynamo_backend_is_speed_compile(tmp_path: Path) -> None:
    """--dynamo_backend eager trains exactly as speed.compile=true speed.compile_backend=eager (Accelerate compiles
    nothing on top), and the run's config says so."""
    base = ("train.steps=2", *TINY)
    flag = ok(launch("--cpu", "--dynamo_backend", "eager", args=(f"run.dir={tmp_path / 'a'}", *base)))
    keys = ("speed.compile=true", "speed.compile_backend=eager")
    ok(launch("--cpu", "--dynamo_backend", "no", args=(f"run.dir={tmp_path / 'b'}", *base, *keys)))
    assert "--dynamo_backend eager: speed.compile=true speed.compile_backend=eager" in flag.stdout
    speed = OmegaConf.load(tmp_path / "a" / "config.yaml").speed
    assert speed.compile is True and speed.compile_backend == "eager"
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    for key in ("loss_d", "loss_g", "wasserstein", "penalty", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key


@pytest.mark.parametrize("backend", ["tvm"])
def test_dynamo_backend_without_a_speed_compile_backend_is_refused(run_dir: Path, backend: str) -> None:
    proc = launch("--cpu", "--dynamo_backend", backend, args=(f"run.dir={run_dir}", "train.steps=1", *TINY))
    # train.py exits 2 with the message; accelerate launch reports that exit status (with its own traceback)
    assert proc.returncode != 0 and "returned non-zero exit status 2" in proc.stderr
    assert f"error: --dynamo_backend {backend} cannot be used" in proc.stderr
    assert "/trainer/" not in proc.stderr  # no frame of the package: the launcher's traceback only
    assert not (run_dir / "metrics.jsonl").exists()


def test_gradient_accumulation_is_refused(run_dir: Path) -> None:
    """accelerate launch passes --gradient_accumulation_steps on only with DeepSpeed (ACCELERATE_GRADIENT_ACCUMULATION_
    STEPS); there and when the variable is set by hand the run stops before any model with the way out."""
    ds = ("--use_deepspeed", "--zero_stage", "2", "--gradient_accumulation_steps", "4")
    proc = launch(*ds, args=(f"run.dir={run_dir}", "train.steps=1", *TINY))
    assert proc.returncode != 0 and "--gradient_accumulation_steps 4" in proc.stderr
    assert "train.batch_size (and train.batch_size_g) 4 times larger" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()
    proc = python_train(
        f"run.dir={run_dir}", "train.steps=1", *TINY, env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}
    )
    assert proc.returncode == 2 and "--gradient_accumulation_steps 2" in proc.stderr and "Traceback" not in proc.stderr
