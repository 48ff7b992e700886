"""Starting, finishing and stopping a run as a researcher meets it: a mistyped run.dir, a run already complete, a
failed start, a stop signal during start-up or sent to `accelerate launch`, an error after the progress bar."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import BASE, ROOT, TINY, _env, ok, python_train, read_metrics
from test_reliability import _wait_for

from trainer.run.signals import EXIT_PREEMPTED


def test_resume_latest_on_a_mistyped_run_dir_says_it_starts_fresh(tmp_path: Path) -> None:
    ok(python_train(f"run.dir={tmp_path / 'default'}", "train.steps=1", *TINY))
    typo = tmp_path / "defualt"
    proc = ok(python_train(f"run.dir={typo}", "run.resume=latest", "train.steps=1", *TINY))
    notice = next(line for line in proc.stdout.splitlines() if "run.resume=latest" in line)
    assert f"run.dir={typo} does not exist" in notice and "FRESH" in notice
    assert f"Did you mean {tmp_path / 'default'}?" in notice
    assert "fresh run" in proc.stdout


def test_run_already_at_train_steps_says_so_and_changes_nothing(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY))
    before = {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file() and f.name != ".lock"}
    proc = ok(python_train(f"run.dir={run_dir}", "train.steps=2", "run.resume=latest", *TINY))
    assert "nothing to train" in proc.stdout and "step 2 = train.steps" in proc.stdout
    assert "train.steps=4" in proc.stdout and "trainer.sample" in proc.stdout
    assert {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file() and f.name != ".lock"} == before


def test_failed_start_leaves_no_run_folder_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = python_train(f"run.dir={run_dir}", "data.name=mnist", f"data.root={tmp_path / 'nodata'}", *TINY)
    assert proc.returncode == 2 and "data.name=mnist" in proc.stderr
    assert not run_dir.exists()  # no config.yaml, no lock, no folder
    existing = tmp_path / "existing"
    ok(python_train(f"run.dir={existing}", "train.steps=2", *TINY))
    saved = (existing / "config.yaml").read_text()
    proc = python_train(f"run.dir={existing}", "run.resume=latest", "train.steps=3", *TINY, "model.width=16")
    assert proc.returncode == 2 and "model.width" in proc.stderr
    assert (existing / "config.yaml").read_text() == saved


def test_error_message_starts_its_own_line_after_the_progress_bar(run_dir: Path) -> None:
    nan_steps = ",".join(str(s) for s in range(2, 9))
    args = (f"run.dir={run_dir}", "train.steps=8", *TINY, "train.max_nonfinite=2", "log.progress=bar")  # as on a tty
    proc = python_train(*args, env={"WGAN_GP_FAULT_NAN_AT": nan_steps})
    assert proc.returncode == 2 and "%|" in proc.stderr  # the bar was drawn
    errors = [line for line in proc.stderr.split("\n") if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "non-finite" in errors[0]


def test_stop_signal_during_start_up_still_checkpoints(run_dir: Path) -> None:
    """SIGTERM as soon as main() imports trainer.config (torch, the data, the models still to come): the run takes one
    step, writes its checkpoint and exits 75, instead of dying without a word."""
    cmd = [sys.executable, "-X", "importtime", "train.py", *BASE, f"run.dir={run_dir}", "train.steps=50", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # -X importtime reports each module when its import completes
        if line.rstrip().endswith("| trainer.config"):  # imported inside main(), after its first line
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "stopped by SIGTERM at step 1" in err
    assert (run_dir / "checkpoints/step-00000001/trainer_state.json").is_file()


def test_sigterm_to_accelerate_launch_stops_the_training_process(run_dir: Path) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [*launch, "train.py", *BASE, f"run.dir={run_dir}", "train.steps=100000", *TINY]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 2)
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        assert len(children) == 1
        trainer = int(children[0])
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        _wait_for(lambda: not Path(f"/proc/{trainer}").exists() or _zombie(trainer), timeout=120)
    finally:
        launcher.kill()
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1  # written on the way out
    stopped = int(checkpoints[0].name.split("-")[1])
    ok(python_train(f"run.dir={run_dir}", f"train.steps={stopped + 1}", "run.resume=latest", *TINY))
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, stopped + 2))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_lock_file_names_the_holder(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=1", *TINY))
    holder = (run_dir / ".lock").read_text()
    assert holder.startswith("pid ") and " on " in holder and "train.py" in holder
    assert os.path.getsize(run_dir / ".lock") < 1000
