"""Helpers that launch the real train.py (plain python, `accelerate launch`, or torchrun with gloo) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the launch helpers below give train.py when a test passes no --config of its own: configs/digits.yaml, the
# schema's defaults (the 8x8 digits on the small conv pair), so a test's overrides make a run of seconds. The offline
# default itself (configs/default.yaml, what a bare train.py reads: 28x28 digits, 8,000 MLP steps) is launched with
# default=True (tests/test_train_run.py, tests/test_first_hour.py).
BASE = ["--config", "configs/digits.yaml"]
# A tiny image run: digits at 8x8, a narrow conv pair, small batches; seconds on a 2-core CPU.
TINY = [
    "data.image_size=8",
    "model.width=8",
    "model.z_dim=16",
    "train.batch_size=16",
    "train.n_critic=2",
    "log.every=1",
    "log.sample_every=0",
    "checkpoint.every=0",
    "eval.at_end=false",  # the end-of-run quality figure costs seconds per run: tests/test_first_hour.py checks it
]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"})
    env.update(extra or {})
    return env


def run_cmd(cmd: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(env), capture_output=True, text=True, timeout=timeout)


FAULTS = ("WGAN_GP_FAULT_", "WGAN_GP_EMULATE_")  # variables that tests/faulty_train.py acts on


def entry(env: dict | None) -> str:
    """train.py, or tests/faulty_train.py (train.py with faults injected) when `env` asks for a fault."""
    return "tests/faulty_train.py" if any(k.startswith(FAULTS) for k in env or {}) else "train.py"


def based(args: tuple[str, ...] | list[str], default: bool = False) -> list[str]:
    """`args` after BASE, unless they give a --config (or a bare YAML path: the slip train.py explains) or `default`."""
    own = default or any(
        a == "--config" or a.startswith("--config=") or ("=" not in a and a.endswith((".yaml", ".yml"))) for a in args
    )
    return list(args) if own else [*BASE, *args]


def python_train(*args: str, default: bool = False, **kw) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, entry(kw.get("env")), *based(args, default)], **kw)


def accelerate_train(*args: str, default: bool = False, **kw) -> subprocess.CompletedProcess:
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
    ]
    cmd = [*launch, "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", *based(args, default)]
    return run_cmd(cmd, **kw)


def torchrun_train(
    nproc: int, *args: str, env_extra: dict | None = None, default: bool = False, **kw
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [entry(env_extra), *based(args, default)]
    return run_cmd(cmd, env={"ACCELERATE_USE_CPU": "1", **(env_extra or {})}, **kw)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: long fuzz runs, heavy builds; skipped unless WGAN_GP_SLOW_TESTS=1 (CI runs a seeded subset)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if os.environ.get("WGAN_GP_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow fuzz: set WGAN_GP_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
