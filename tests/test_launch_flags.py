"""accelerate launch's --dynamo_backend (mapped onto speed.compile) and --gradient_accumulation_steps (refused),
through the real `accelerate launch`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import TINY, based, ok, python_train, read_metrics, run_cmd
from omegaconf import OmegaConf

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no"]


def launch(*flags: str, args: tuple[str, ...]) -> object:
    return run_cmd([*LAUNCH, *flags, "train.py", *based(args)])


def test_dynamo_backend_is_speed_compile(run_dir: Path) -> None:
    """--dynamo_backend eager becomes speed.compile=true speed.compile_backend=eager: announced, in the run's config,
    and the run trains."""
    flag = ok(launch("--cpu", "--dynamo_backend", "eager", args=(f"run.dir={run_dir}", "train.steps=2", *TINY)))
    assert "--dynamo_backend eager: speed.compile=true speed.compile_backend=eager" in flag.stdout
    speed = OmegaConf.load(run_dir / "config.yaml").speed
    assert speed.compile is True and speed.compile_backend == "eager"
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


@pytest.mark.parametrize("backend", ["tvm"])
def test_dynamo_backend_without_a_speed_compile_backend_is_refused(run_dir: Path, backend: str) -> None:
    proc = launch("--cpu", "--dynamo_backend", backend, args=(f"run.dir={run_dir}", "train.steps=1", *TINY))
    # train.py exits 2 with the message; accelerate launch reports that exit status (with its own traceback)
    assert proc.returncode != 0 and "returned non-zero exit status 2" in proc.stderr
    assert f"error: --dynamo_backend {backend} cannot be used" in proc.stderr
    assert "/trainer/" not in proc.stderr  # no frame of the package: the launcher's traceback only
    assert not (run_dir / "metrics.jsonl").exists()


def test_dynamo_backend_cudagraphs_with_speed_cuda_graph_is_refused(run_dir: Path) -> None:
    """Any other backend may be compiled inside speed.cuda_graph's capture; cudagraphs' own graphs may not."""
    args = (f"run.dir={run_dir}", "train.steps=1", "speed.cuda_graph=true", *TINY)
    proc = launch("--cpu", "--dynamo_backend", "cudagraphs", args=args)
    assert proc.returncode != 0 and "error: --dynamo_backend cudagraphs cannot run with speed.cuda_graph" in proc.stderr
    assert "Use --dynamo_backend inductor, or drop speed.cuda_graph." in proc.stderr
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


def test_accelerate_compiles_nothing_itself(monkeypatch) -> None:
    """The launcher's variable turns into speed.compile; Accelerate's own dynamo plugin stays off (no second
    torch.compile around the prepared models)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DynamoBackend

    from trainer.accel.runtime import make_accelerator
    from trainer.core.gate import configure

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "AOT_EAGER")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        cfg = configure(None, ("train.cpu=true",), launch=True)
        accelerator = make_accelerator(cfg)
        assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
        assert cfg.speed.compile and cfg.speed.compile_backend == "aot_eager"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
