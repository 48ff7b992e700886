"""torchrun --max-restarts survives a lost worker: kill -9 one of 2 gloo processes mid-run; the restarted group forms
(trainer.accel.runtime.elastic_process_group), resumes from the newest checkpoint and ends byte-identical to an
uninterrupted run, every logged step exactly once, exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, _env, ok, read_metrics, torchrun_train

STEPS, EVERY = 40, 5
ARGS = [
    "--config",
    "configs/8gaussians.yaml",
    "model.width=32",
    f"train.steps={STEPS}",
    f"checkpoint.every={EVERY}",
    f"log.every={EVERY}",
    "train.cpu_threads=1",
    "log.sample_every=0",
    "eval.at_end=false",
    "seed=3",
    "run.resume=latest",
]
FINAL = ("model.safetensors", "model_1.safetensors", "generator.safetensors")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers' ranks")


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _workers(agent: int) -> dict[int, int]:
    """torchrun's workers (its children) by rank."""
    try:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    except OSError:
        return {}
    return {rank: int(pid) for pid in children if (rank := _rank_of(int(pid))) is not None}


def _checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step-")) if folder.is_dir() else []


def test_max_restarts_resumes_byte_identical_after_kill_9(tmp_path: Path) -> None:
    """Rank 0 is the victim: it holds the run folder's lock and writes metrics.jsonl and the checkpoints."""
    victim = 0
    straight = tmp_path / "straight"
    ok(torchrun_train(2, *ARGS, f"run.dir={straight}"))

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--max-restarts", "1"]
    log = (tmp_path / "torchrun.log").open("w")  # a file, not a pipe: nobody reads while the test waits
    agent = subprocess.Popen(
        [*cmd, "train.py", *ARGS, f"run.dir={run_dir}"],
        cwd=ROOT,
        env=_env({"ACCELERATE_USE_CPU": "1"}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, killed = time.monotonic() + 120, None
        while time.monotonic() < deadline and agent.poll() is None:
            workers = _workers(agent.pid)
            if _checkpoints(run_dir) and victim in workers:  # mid-run: a checkpoint exists, the run goes on
                os.kill(workers[victim], signal.SIGKILL)
                killed = workers[victim]
                break
            time.sleep(0.05)
        agent.wait(timeout=240)
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    out = (tmp_path / "torchrun.log").read_text()
    assert killed is not None, "no checkpoint appeared while the workers ran"
    assert agent.returncode == 0, f"exit {agent.returncode}\n{out[-6000:]}"
    assert f"failed (exitcode: -9) local_rank: {victim} (pid: {killed})" in out, out[-6000:]  # this kill was seen
    assert "connectFullMesh" not in out and "Traceback" not in out, out[-6000:]
    resumed = re.findall(r"resuming from \S+ at step (\d+);", out)
    assert len(resumed) == 1 and int(resumed[0]) < STEPS, out[-6000:]  # one restart, killed before the end

    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == list(range(EVERY, STEPS + 1, EVERY)), steps  # each logged step exactly once
    last = f"step-{STEPS:08d}"
    for name in FINAL:
        got = (run_dir / "checkpoints" / last / name).read_bytes()
        assert got == (straight / "checkpoints" / last / name).read_bytes(), f"{name} differs after the restart"
