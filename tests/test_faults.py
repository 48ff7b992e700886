"""Fault matrix: seeded kill -9 at random points (inside checkpoint writes too), full disks, poisoned and corrupted
checkpoints, two runs on one folder. After each fault the run resumes to the uninterrupted run's exact bytes."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, ok, python_train, read_metrics
from test_reliability import _spawn, _wait_for

from trainer.run.checkpoint import verify

STEPS, EVERY, KEEP, LOG = 12, 2, 2, 3
RUN = (f"train.steps={STEPS}", *TINY, f"checkpoint.every={EVERY}", f"checkpoint.keep={KEEP}", f"log.every={LOG}")
TIMING = ("time", "imgs_per_s", "peak_mem_mb")  # wall-clock figures differ between any two runs
POINTS = ("lock", "step", "metrics", "save", "publish", "prune")


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING and not k.startswith("time_")}


def ckpts(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def whole_lines(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl's complete lines (a kill may leave the last one cut)."""
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            continue
    return steps


def progress(run_dir: Path) -> int:
    names = ckpts(run_dir)
    return int(names[-1].split("-")[1]) if names else 0


def kill_point(rng: random.Random, done: int, first_choice: str) -> tuple[int, str]:
    """A point the run will reach when it resumes from step `done` (so every try really is killed): of the kind
    `first_choice` when the run still has one ahead, else of a random kind."""
    point = first_choice
    while True:
        later = range(done + 1, STEPS + 1)
        steps = {
            "lock": [done + 1],
            "step": list(later),
            "metrics": [s for s in later if s % LOG == 0],
            "prune": [s for s in later if s % EVERY == 0 and EVERY * KEEP < s < STEPS],  # (not the run's end)
        }.get(point, [s for s in later if s % EVERY == 0])
        if steps:
            return rng.choice(steps[:2]), point  # near the resume point: the run advances slowly
        point = rng.choice(POINTS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "straight"
    ok(python_train(f"run.dir={run_dir}", *RUN))
    return run_dir


def kill_and_resume(run_dir: Path, uninterrupted: Path, seed: int, kills: int) -> list[tuple[int, str]]:
    rng, done = random.Random(seed), []
    # Each kind once first (pruning needs a run not yet past step 10), then seeded rounds of all six.
    kinds = ["prune", "save", "publish", "metrics", "step", "lock"]
    kinds += [kind for _ in range(kills) for kind in rng.sample(POINTS, len(POINTS))]
    while len(done) < kills:
        step, point = kill_point(rng, progress(run_dir), kinds[len(done)])
        proc = python_train(
            f"run.dir={run_dir}", "run.resume=latest", *RUN, env={"WGAN_GP_FAULT_KILL_AT": f"{step}:{point}"}
        )
        assert proc.returncode == -9, f"kill at {step}:{point} did not happen:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
        done.append((step, point))
    ok(python_train(f"run.dir={run_dir}", "run.resume=latest", *RUN))
    final, straight = run_dir / "checkpoints" / f"step-{STEPS:08d}", uninterrupted / "checkpoints" / f"step-{STEPS:08d}"
    files = sorted(f.name for f in straight.iterdir() if f.name not in ("config.yaml", "trainer_state.json"))
    assert len(files) == 7 and files == sorted(f.name for f in final.iterdir() if f.name in files)
    for name in files:  # weights, optimizer moments, every RNG: byte for byte
        assert (final / name).read_bytes() == (straight / name).read_bytes(), f"{name} differs after kills {done}"
    metrics, expected = read_metrics(run_dir), read_metrics(uninterrupted)
    assert [m["step"] for m in metrics] == list(range(LOG, STEPS + 1, LOG))  # each logged step exactly once
    assert [comparable(m) for m in metrics] == [comparable(m) for m in expected]  # the same values, too
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    return done


def test_kill_9_at_seeded_points_resumes_byte_identical(tmp_path: Path, uninterrupted: Path) -> None:
    """10 seeded kills (every kind of point; save, publish, prune inside a checkpoint write), then the exact
    uninterrupted result."""
    done = kill_and_resume(tmp_path / "run", uninterrupted, seed=12, kills=10)
    assert {p for _, p in done} == set(POINTS), done
    print(f"kills survived: {done}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_9_fuzz(tmp_path: Path, uninterrupted: Path, seed: int) -> None:
    kill_and_resume(tmp_path / "run", uninterrupted, seed=100 + seed, kills=12)


def test_restart_before_first_checkpoint_logs_each_step_once(run_dir: Path) -> None:
    """Killed before any checkpoint, started again (fresh, then resume=latest): no step twice in metrics.jsonl."""
    args = (f"run.dir={run_dir}", "train.steps=6", *TINY)
    assert python_train(*args, env={"WGAN_GP_FAULT_KILL_AT": "4:step"}).returncode == -9
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    assert python_train(*args, env={"WGAN_GP_FAULT_KILL_AT": "5:metrics"}).returncode == -9  # fresh, no resume
    assert whole_lines(run_dir) == [1, 2, 3, 4]  # and half a line of step 5
    proc = ok(python_train(*args, "run.resume=latest"))
    assert "no checkpoint in" in proc.stdout and "FRESH" in proc.stdout
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'needs root'})")


@pytest.fixture
def disk(tmp_path: Path):
    path = tmp_path / "disk"
    _mount(path, "3M")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on the tmpfs."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (free - leave))
    return filler


def test_full_disk_while_logging_keeps_whole_lines_and_resumes(disk: Path) -> None:
    run_dir = disk / "run"
    filler = fill(disk, 3 * 4096)  # config.yaml, then metrics.jsonl fills the rest long before step 60
    args = (f"run.dir={run_dir}", "train.steps=60", *TINY)
    proc = python_train(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "metrics.jsonl failed (No space left on device)" in proc.stderr
    logged = [m["step"] for m in read_metrics(run_dir)]  # every line parses: no half line
    assert logged == list(range(1, len(logged) + 1)) and 3 <= len(logged) < 60
    filler.unlink()
    ok(python_train(*args, "run.resume=latest"))
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 61))


@pytest.mark.parametrize(
    "case", [0, 1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)]
)
def test_full_disk_while_checkpointing_exits_2_and_resumes(disk: Path, case: int) -> None:
    """Seeded free space: the write fails in a different file each time; earlier checkpoints stay verified."""
    leave = random.Random(case).randrange(40, 260) * 1024
    run_dir, filler = disk / "run", fill(disk, leave)
    args = (f"run.dir={run_dir}", "train.steps=8", *TINY, "checkpoint.every=1", "checkpoint.keep=0")
    proc = python_train(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "No space left on device" in proc.stderr and "earlier checkpoints are untouched" in proc.stderr
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    for name in ckpts(run_dir):
        assert verify(run_dir / "checkpoints" / name)["step"] == int(name.split("-")[1])
    filler.unlink()
    ok(python_train(*args, "run.resume=latest"))
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 9))


def test_nonfinite_weights_are_never_checkpointed(run_dir: Path) -> None:
    """A diverged update (a critic weight Inf after step 3): no checkpoint at 4, the run stops, step 2 resumes."""
    args = (f"run.dir={run_dir}", "train.steps=6", *TINY, "checkpoint.every=2")  # the guard sees finite gradients
    proc = python_train(*args, env={"WGAN_GP_FAULT_INF_WEIGHT_AT": "3"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "critic's weights hold NaN/Inf at step 4" in proc.stderr
    assert ckpts(run_dir) == ["step-00000002"]
    ok(python_train(*args, "run.resume=latest"))
    assert ckpts(run_dir)[-1] == "step-00000006"


CORRUPTIONS = {
    "optimizer_1.bin": lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],  # one flipped bit
    "random_states_0.pkl": lambda b: b[: len(b) // 2],  # cut off
    "model_1.safetensors": lambda b: b[:-8] + bytes([b[-8] ^ 0x40]) + b[-7:],  # a weight's exponent bit
    "config.yaml": lambda b: b"model: [\n",  # garbled
}


CORRUPT_ARGS = (*TINY, "checkpoint.every=2", "checkpoint.keep=0")


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("corrupt") / "run"
    ok(python_train(f"run.dir={run_dir}", *CORRUPT_ARGS, "train.steps=4"))
    return run_dir


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back_with_a_warning_naming_the_file(
    tmp_path: Path, four_steps: Path, name: str
) -> None:
    """(An explicit damaged path is an error naming the file: tests/test_bad_inputs.py, resume-* cases.)"""
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    victim = run_dir / "checkpoints/step-00000004" / name
    victim.write_bytes(CORRUPTIONS[name](victim.read_bytes()))
    latest = ok(python_train(f"run.dir={run_dir}", *CORRUPT_ARGS, "train.steps=6", "run.resume=latest"))
    assert f"warning: checkpoint {victim.parent} is damaged" in latest.stdout and name in latest.stdout
    assert "Falling back to step-00000002" in latest.stdout and "step-00000002 at step 2" in latest.stdout
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_second_run_on_a_folder_is_refused_and_the_lock_dies_with_its_process(run_dir: Path) -> None:
    first = _spawn(f"run.dir={run_dir}", "train.steps=100000", *TINY)
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 2)
        second = python_train(f"run.dir={run_dir}", "train.steps=5", "run.resume=latest", *TINY)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another training run (pid {first.pid} on " in second.stderr
        before = len(read_metrics(run_dir))
        _wait_for(lambda: len(read_metrics(run_dir)) > before + 1)  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == list(range(1, len(steps) + 1))
    ok(python_train(f"run.dir={run_dir}", f"train.steps={steps[-1] + 2}", *TINY, "run.resume=latest"))


def test_secrets_from_the_environment_are_never_written(run_dir: Path) -> None:
    secret = "s3cr3t-ZX81-token-4242"
    args = (f"run.dir={run_dir}", "train.steps=2", *TINY, "log.tracker=wandb", "data.root=${oc.env:MY_PROJECT_TOKEN}")
    ok(python_train(*args, env={"MY_PROJECT_TOKEN": secret}))
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert len(files) > 8 and any(f.suffix == ".wandb" for f in files)  # W&B's own files are searched too
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    assert "root: ${oc.env:MY_PROJECT_TOKEN}" in (run_dir / "config.yaml").read_text()
    ok(python_train(*args[:1], "train.steps=3", *TINY, args[-1], "run.resume=latest", env={"MY_PROJECT_TOKEN": secret}))
    shutil.rmtree(run_dir)
