"""Faults cost at most the work since the last checkpoint: NaNs, signals, kill -9 mid-save, corrupt or full disks."""

from __future__ import annotations

import ast
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, _env, based, entry, ok, python_train, read_metrics, torchrun_train

from trainer.run.checkpoint import record_digest
from trainer.run.signals import EXIT_PREEMPTED


def _ckpts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))


def _spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, entry(env), *based(args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.2)


# Adam's plain (foreach) path reads the verdict at once; the fused kernel (CUDA's default) skips on the device.
ADAM_KERNELS = ["speed.fused_adam=false", "speed.fused_adam=true"]


@pytest.mark.parametrize("kernel", ADAM_KERNELS)
def test_nan_on_one_rank_is_skipped_on_both(run_dir: Path, kernel: str) -> None:
    """A NaN critic loss on rank 1 only: both ranks skip that update, count it, and stay identical."""
    args = (f"run.dir={run_dir}", "train.steps=3", *TINY, kernel)
    ok(torchrun_train(2, *args, env_extra={"WGAN_GP_FAULT_NAN_AT": "2@1"}))
    skipped = [m["skipped_updates"] for m in read_metrics(run_dir)]
    assert skipped == [0, 2, 2]  # the 2 critic updates of step 2 (n_critic=2); the generator update went through
    state = json.loads((run_dir / "checkpoints/step-00000003/trainer_state.json").read_text())
    assert state["fingerprints"][0] == state["fingerprints"][1]
    assert all(abs(m["loss_d"]) < 1e6 for m in read_metrics(run_dir) if m["step"] != 2)


@pytest.mark.parametrize("kernel", ADAM_KERNELS)
def test_persistent_nan_stops_and_keeps_last_good_checkpoint(run_dir: Path, kernel: str) -> None:
    nan_steps = ",".join(str(s) for s in range(3, 20))
    args = (f"run.dir={run_dir}", "train.steps=10", *TINY, "checkpoint.every=2", "train.max_nonfinite=3", kernel)
    proc = python_train(*args, env={"WGAN_GP_FAULT_NAN_AT": nan_steps})
    assert proc.returncode == 2 and "non-finite" in proc.stderr and "Traceback" not in proc.stderr
    assert _ckpts(run_dir) == ["step-00000002"]
    ok(python_train(f"run.dir={run_dir}", "train.steps=4", "run.resume=latest", *TINY))  # the good one resumes
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_exits_75_and_resumes(run_dir: Path, sig: signal.Signals) -> None:
    proc = _spawn(f"run.dir={run_dir}", "train.steps=100000", *TINY)
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert f"stopped by {sig.name} at step" in err and "run.resume=latest" in err
    stopped = int(err.split(" at step ")[1].split()[0])
    assert _ckpts(run_dir) == [f"step-{stopped:08d}"]
    ok(python_train(f"run.dir={run_dir}", f"train.steps={stopped + 2}", "run.resume=latest", *TINY))
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, stopped + 3))


def test_kill_9_during_checkpoint_write_resumes_from_previous(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY))
    slow = _spawn(
        f"run.dir={run_dir}", "train.steps=4", "run.resume=latest", *TINY, env={"WGAN_GP_FAULT_SLOW_SAVE": "120"}
    )
    tmp = run_dir / "checkpoints" / ".tmp-step-00000004"
    _wait_for(lambda: (tmp / "trainer_state.json").is_file())  # everything written, not yet renamed
    slow.kill()
    slow.wait()
    assert _ckpts(run_dir) == ["step-00000002"]
    resumed = ok(python_train(f"run.dir={run_dir}", "train.steps=4", "run.resume=latest", *TINY))
    assert "resuming from" in resumed.stdout and "step-00000002 at step 2" in resumed.stdout
    assert _ckpts(run_dir) == ["step-00000002", "step-00000004"] and not tmp.exists()
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]


def test_corrupt_latest_falls_back_to_previous(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=4", *TINY, "checkpoint.every=2", "checkpoint.keep=0"))
    weights = run_dir / "checkpoints/step-00000004/model.safetensors"
    weights.write_bytes(b"\0" * 64)
    resumed = ok(python_train(f"run.dir={run_dir}", "train.steps=6", "run.resume=latest", *TINY))
    assert "warning" in resumed.stdout and "Falling back to step-00000002" in resumed.stdout
    assert "step-00000002 at step 2" in resumed.stdout
    assert _ckpts(run_dir)[-1] == "step-00000006"
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_that_verifies_but_cannot_be_loaded_falls_back(run_dir: Path) -> None:
    """The newest checkpoint's weights are replaced by bytes that are no safetensors file and its record is updated to
    their SHA-256, so it passes verification and fails only when Accelerate loads it: under run.resume=latest the
    run falls back to the previous checkpoint with a warning naming it; given as a path, it is an error (exit 2)."""
    ok(python_train(f"run.dir={run_dir}", "train.steps=4", *TINY, "checkpoint.every=2", "checkpoint.keep=0"))
    newest = run_dir / "checkpoints/step-00000004"
    (newest / "model.safetensors").write_bytes(b"\1" * 64)
    record = json.loads((newest / "trainer_state.json").read_text())
    record["files"]["model.safetensors"] = hashlib.sha256(b"\1" * 64).hexdigest()
    record["record_sha256"] = record_digest(record)  # the record covers itself: it is resealed too
    (newest / "trainer_state.json").write_text(json.dumps(record, indent=1))
    explicit = python_train(f"run.dir={run_dir}", "train.steps=6", f"run.resume={newest}", *TINY)
    assert explicit.returncode == 2 and f"checkpoint {newest} could not be read" in explicit.stderr
    assert "Traceback" not in explicit.stderr
    resumed = ok(python_train(f"run.dir={run_dir}", "train.steps=6", "run.resume=latest", *TINY))
    assert f"warning: checkpoint {newest} could not be read" in resumed.stdout
    assert "Falling back to step-00000002" in resumed.stdout and "step-00000002 at step 2" in resumed.stdout
    assert _ckpts(run_dir)[-1] == "step-00000006"
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_errors_and_keeps_earlier_checkpoints(tmp_path: Path, mounts) -> None:
    probe = tmp_path / "probe"
    ok(python_train(f"run.dir={probe}", "train.steps=1", *TINY))
    size = sum(f.stat().st_size for f in (probe / "checkpoints").rglob("*") if f.is_file())
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, f"size={int(size * 1.6) + 64 * 1024}"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    mounts.append(disk)
    args = (f"run.dir={disk}/run", "train.steps=5", *TINY, "checkpoint.every=1", "checkpoint.keep=0")
    proc = python_train(*args)
    assert proc.returncode == 2 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert "earlier checkpoints are untouched" in proc.stderr
    assert _ckpts(disk / "run") == ["step-00000001"]
    assert json.loads((disk / "run/checkpoints/step-00000001/trainer_state.json").read_text())["step"] == 1


def test_read_only_run_folder(tmp_path: Path, mounts) -> None:
    disk = tmp_path / "ro"
    if not _mount_tmpfs(disk, "ro,size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    mounts.append(disk)
    proc = python_train(f"run.dir={disk}/run", "train.steps=1", *TINY)
    assert proc.returncode == 2 and "cannot be written" in proc.stderr and "Traceback" not in proc.stderr


def test_no_wandb_login_warns_once_and_trains_offline(run_dir: Path, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "WANDB_MODE": "online", "WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")}
    proc = ok(python_train(f"run.dir={run_dir}", "train.steps=3", "log.tracker=wandb", *TINY, env=env))
    assert proc.stdout.count("no W&B login") == 1
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (run_dir / "wandb_id.txt").read_text() in runs[0].name


def test_secrets_never_written(run_dir: Path) -> None:
    secrets = {"WANDB_API_KEY": "local-fakekey0123456789abcdef0123456789abcd", "MY_SERVICE_TOKEN": "tok-ZX81-secret-77"}
    secrets["AWS_SECRET_ACCESS_KEY"] = "aws-s3cr3t-QWERTY-4242"
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", "log.tracker=wandb", *TINY, env=secrets))
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert any(f.suffix == ".wandb" for f in files) and len(files) > 10
    for path in files:
        data = path.read_bytes()
        for value in secrets.values():
            assert value.encode() not in data, f"{value} leaked into {path}"


def test_no_unsafe_torch_load_in_the_package() -> None:
    for path in (ROOT / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "load"
                and "torch" in ast.unparse(node.func)
            ):
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kwargs.get("weights_only") == "True", (
                    f"{path}:{node.lineno} torch.load without weights_only=True"
                )
