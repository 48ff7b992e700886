"""Real SLURM: `sbatch slurm/run.sh` on the CPU cluster of tests/slurm/setup_cluster.sh, 2 gloo ranks.

Real daemons (slurmctld, slurmd, munged), real sbatch/scancel/scontrol, real signals; nothing is mocked. The one
liberty: a requeued job waits out SLURM's fixed two-minute hold, which the test lifts with `scontrol update
StartTime=now` instead of sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BASE, ROOT, TINY, read_metrics


def _cluster_missing() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found: run tests/slurm/setup_cluster.sh (as root) to install and start a local cluster"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        return f"no SLURM controller answers ({(ping.stdout + ping.stderr).strip()}): run tests/slurm/setup_cluster.sh"
    return None


pytestmark = pytest.mark.skipif(_cluster_missing() is not None, reason=str(_cluster_missing()))

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
TIMEOUT_S, SHUTDOWN_S = 5, 10  # process-group timeout for the hung rank; the launcher's grace period after a signal


class Job:
    """One sbatch submission of slurm/run.sh and what scontrol says about it."""

    def __init__(self, tmp_path: Path, run_dir: Path, steps: int, *extra: str, nodes: int = 1) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
        env.update(
            OMP_NUM_THREADS="1",
            WANDB_MODE="offline",
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            WGAN_GP_PROCS_PER_NODE=str(2 // nodes),
            WGAN_GP_SHUTDOWN_S=str(SHUTDOWN_S),
        )
        self.log = tmp_path / "slurm.out"
        sbatch = [
            "sbatch", "--parsable", f"--job-name=wgan-gp-test-{os.getpid()}", f"--nodes={nodes}", "--gres=none",
            "--cpus-per-task=2", f"--output={self.log}",
            "slurm/run.sh", *BASE, f"run.dir={run_dir}", *TINY, f"train.steps={steps}", *extra,
        ]  # fmt: skip
        out = subprocess.run(sbatch, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        self.id = out.strip().split(";")[0]

    def info(self) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_until(self, done, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info()
            if done(info):
                return info
            assert info.get("JobState") not in FINISHED, f"job ended ({info.get('JobState')}) {what}:\n{self.text()}"
            time.sleep(0.5)
        raise AssertionError(f"job {self.id} not {what} after {timeout} s: {self.info()}\n{self.text()}")

    def wait_finished(self, timeout: float = 120) -> dict[str, str]:
        return self.wait_until(lambda i: i.get("JobState") in FINISHED, timeout, "finished")

    def release_requeued(self, restarts: int, timeout: float = 60) -> None:
        """Waits for the self-requeue and lifts SLURM's hold on a requeued job (EligibleTime = requeue + 2 min)."""
        self.wait_requeued(restarts, timeout)
        self.release()

    def wait_requeued(self, restarts: int, timeout: float = 60) -> None:
        """Waits until the job has requeued itself `restarts` times and its last attempt has left the node."""
        self.wait_until(lambda i: i.get("Restarts") == str(restarts) and i.get("Reason") == "BeginTime",
                        timeout, f"requeued (restart {restarts})")  # fmt: skip
        self.wait_until(lambda _: _nodes_idle(), 30, "off its node")

    def release(self) -> None:
        """Lifts SLURM's hold on a requeued job."""
        # slurmd rejects a credential issued in the second it revoked the last one for this job id; the hold is
        # SLURM's own guard against that, so keep a margin of it.
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={self.id}", "StartTime=now"], check=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log yet)"

    def cancel(self) -> None:
        if self.info().get("JobState") not in FINISHED:
            subprocess.run(["scancel", self.id])


def _nodes_idle() -> bool:
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return bool(states) and set(states) == {"idle"}


def _metrics_step(run_dir: Path) -> int:
    try:
        return max((m["step"] for m in read_metrics(run_dir)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-line
        return 0


def _wait_for_step(job: Job, run_dir: Path, step: int, timeout: float = 90) -> None:
    job.wait_until(lambda i: i.get("JobState") == "RUNNING" and _metrics_step(run_dir) >= step, timeout,
                   f"past step {step}")  # fmt: skip


def _worker_pid(run_dir: Path, rank: int) -> int:
    """The train.py process of `rank` (not its launcher) in this run, found through /proc."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"train.py" in argv and f"run.dir={run_dir}".encode() in argv and b"accelerate.commands.launch" not in argv:
            if f"RANK={rank}".encode() in environ:
                return int(proc.name)
    raise AssertionError(f"no train.py process of rank {rank} for {run_dir}")


def _final_checkpoint(run_dir: Path, steps: int) -> dict:
    state = json.loads((run_dir / "checkpoints" / f"step-{steps:08d}" / "trainer_state.json").read_text())
    assert state["step"] == steps and state["world_size"] == 2
    assert len(state["fingerprints"]) == 2 and state["fingerprints"][0] == state["fingerprints"][1]
    return state


def test_sbatch_two_nodes_one_process_each(tmp_path: Path) -> None:
    """Two slurmd nodes (n1, n2 on this machine): one launcher per node, machine rank from $SLURM_NODEID."""
    if int(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.count("\n")) < 2:
        pytest.skip("the cluster has one node: tests/slurm/setup_cluster.sh sets up two")
    run_dir, steps = tmp_path / "run", 3
    job = Job(tmp_path, run_dir, steps, nodes=2)
    try:
        info = job.wait_finished()
    finally:
        job.cancel()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["NumNodes"] == "2", job.text()
    assert "2 node(s) x 1 cpu process(es)" in job.text() and "training finished" in job.text()
    assert [m["world_size"] for m in read_metrics(run_dir)] == [2] * steps
    _final_checkpoint(run_dir, steps)


def test_preempted_and_hung_job_requeues_itself_and_resumes(tmp_path: Path) -> None:
    """One node, 2 processes. USR1 (as SLURM sends it before the time limit), then a hung rank: both times the job
    comes back and resumes, and it completes at the final step with every step logged once, from 2 ranks."""
    run_dir, steps, every = tmp_path / "run", 120, 20
    job = Job(
        tmp_path, run_dir, steps, f"checkpoint.every={every}", "checkpoint.keep=0", f"train.timeout_s={TIMEOUT_S}"
    )
    try:
        _wait_for_step(job, run_dir, 1)
        # Both ranks stand still while USR1 travels (batch shell, srun, launcher), so the step it lands on is known
        # however fast this machine trains; briefly, well inside the process group's timeout.
        workers = [_worker_pid(run_dir, rank) for rank in (0, 1)]
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            signalled, sent_at = _metrics_step(run_dir), time.monotonic()
            subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], check=True)  # the --signal=B:USR1@120 path
            job.wait_until(lambda _: "closing signal SIGUSR1" in job.text(), TIMEOUT_S - 2, "relaying USR1")
            relayed_s = time.monotonic() - sent_at
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        job.wait_requeued(restarts=1)
        preempted = max(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*"))
        # The step in flight when they stopped, at most, then the one they agree to stop after.
        assert signalled <= preempted <= signalled + 2, f"USR1 at step {signalled}, checkpoint at {preempted}"
        job.release()

        # Past this attempt's first periodic checkpoint, so it saved progress. Where USR1 lands depends on the
        # machine's speed (the step poll sleeps 0.5 s: a fast machine trains 25 steps in it), so count from there.
        periodic = (preempted // every + 1) * every
        assert periodic + 5 < steps, f"preempted at step {preempted}: too late to test a hang before step {steps}"
        _wait_for_step(job, run_dir, periodic + 5)
        assert (run_dir / "checkpoints" / f"step-{periodic:08d}").is_dir(), f"no periodic checkpoint at {periodic}"
        hung = _worker_pid(run_dir, rank=1)
        os.kill(hung, signal.SIGSTOP)  # rank 1 hangs: rank 0 must give up after train.timeout_s
        stopped_at = time.monotonic()
        job.wait_until(lambda _: "Timed out" in job.text(), TIMEOUT_S + 30, "reporting the collective timeout")
        seconds_to_error = time.monotonic() - stopped_at
        os.kill(hung, signal.SIGKILL)  # what torchrun does to it after its fixed 30 s grace; saves the test the wait
        job.release_requeued(restarts=2)
        info = job.wait_finished()
    finally:
        job.cancel()
    log = job.text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "2", log
    assert "1 node(s) x 2 cpu process(es)" in log and log.rstrip().endswith("training finished")
    assert "closing signal SIGUSR1" in log, "the launcher did not relay USR1 to its workers"
    assert f"resuming from {run_dir}/checkpoints/step-{preempted:08d} at step {preempted};" in log
    third = log.split("(restart 2)", 1)[1]
    assert f"resuming from {run_dir}/checkpoints/step-000000" in third, "the third attempt did not resume"
    assert seconds_to_error < TIMEOUT_S + 15, f"rank 0 waited {seconds_to_error:.0f} s for the hung rank"
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1)), "a step is missing or logged twice"
    assert {m["world_size"] for m in metrics} == {2}
    _final_checkpoint(run_dir, steps)
    print(
        f"USR1 relayed in {relayed_s:.1f} s, checkpoint at step {preempted} (signalled at {signalled}); "
        f"hung rank reported after {seconds_to_error:.1f} s"
    )
