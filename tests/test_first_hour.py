"""A newcomer's first hour: the slips people make, the launcher's noise, and what --print-config shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import BASE, ROOT, TINY, _env, python_train, read_metrics, run_cmd

ACCELERATE_Q = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file", "launch/cpu.yaml"]


def test_a_config_file_without_the_flag_says_to_add_it() -> None:
    proc = python_train("configs/mnist-dcgan.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "error: 'configs/mnist-dcgan.yaml' looks like a config file, but config files come after --config: "
        "train.py --config configs/mnist-dcgan.yaml [key=value ...]."
    )


def test_print_config_shows_the_optimizer_values_null_stands_for() -> None:
    """The paper defaults of each loss (Gulrajani et al.: Adam 1e-4, betas (0, 0.9); DCGAN: Adam 2e-4, (0.5, 0.999))."""
    default = python_train("--print-config")
    gan = python_train("--config", "configs/mnist-gan.yaml", "--print-config")
    assert default.returncode == 0 and gan.returncode == 0
    assert yaml.safe_load(default.stdout)["optim"]["lr_d"] is None  # the file itself keeps null: resumes compare it
    assert "#   optim.name: adam\n#   optim.lr_d: 0.0001\n#   optim.lr_g: 0.0001\n#   optim.betas: [0.0, 0.9]" in (
        default.stderr  # beside the YAML, not in it: stdout redirected to a file is the config itself
    )
    assert "#   optim.lr_d: 0.0002" in gan.stderr and "#   optim.betas: [0.5, 0.999]" in gan.stderr


def test_accelerate_launch_quiet_gives_the_error_alone() -> None:
    """Through the real launcher with launch/cpu.yaml and -q: the one error line, no Accelerate warning, no
    traceback; Accelerate's quiet mode exits 1 (python train.py exits 2 for the same error)."""
    proc = run_cmd([*ACCELERATE_Q, "train.py", "model.nme=toy"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'model.nme' (from override 'model.nme=toy'). Did you mean model.name, model.z_dim, "
        "model.width? Valid keys here: name, z_dim, width, conditional."
    ]
    assert python_train("model.nme=toy").returncode == 2


def _start(cmd: list[str], run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 2):
        assert time.time() < deadline and proc.poll() is None, "the run did not start"
        time.sleep(0.2)
    return proc


def _checkpoints(run_dir: Path) -> list[str]:
    return [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")]


def test_ctrl_c_under_python_train_py_is_clean(run_dir: Path) -> None:
    """The README's one-process command: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends
    in a checkpoint, exit 75 and one line; the prompt returns after the checkpoint, no traceback."""
    proc = _start([sys.executable, "train.py", *BASE, f"run.dir={run_dir}", "train.steps=100000", *TINY], run_dir)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75 and "Traceback" not in err and len(_checkpoints(run_dir)) == 1
    assert sum(line.startswith("[wgan-gp] stopped by SIGINT at step") for line in err.splitlines()) == 1


def test_ctrl_c_under_accelerate_launch_still_checkpoints(run_dir: Path) -> None:
    """Accelerate's one-process launcher dies of the Ctrl-C itself (KeyboardInterrupt: README, Usage); its worker
    still finishes the step and writes the checkpoint, so nothing is lost."""
    proc = _start([*ACCELERATE_Q, "train.py", *BASE, f"run.dir={run_dir}", "train.steps=100000", *TINY], run_dir)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=300)
    deadline = time.time() + 120
    while not _checkpoints(run_dir):  # the worker, now orphaned, writes it shortly after
        assert time.time() < deadline, "no checkpoint after Ctrl-C"
        time.sleep(0.2)
    assert proc.returncode != 0


def test_a_busy_cpu_is_named_with_the_fix(monkeypatch) -> None:
    from trainer.accel import runtime

    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (4.7, 4.0, 3.0))
    assert runtime.busy_cpu_warning(2, 0) == (
        "[wgan-gp] warning: this CPU is busy (load average 4.7 on 2 cores); 2 torch threads per process can run "
        "several times slower than 1 under contention: set train.cpu_threads=1 (or fewer processes)."
    )
    assert runtime.busy_cpu_warning(2, 2) == ""  # the user chose
    assert runtime.busy_cpu_warning(1, 0) == ""  # nothing to lower
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert runtime.busy_cpu_warning(2, 0) == ""  # idle


def test_bad_input_is_refused_before_torch_is_imported() -> None:
    """A typo'd key, a wrong type, an impossible value and a missing config file are refused by the parser and the
    gate's first concern, before the heavy imports: `-X importtime` shows no torch module loaded (the time itself is
    measured in the README, not here)."""
    for args in (["train.stepz=3"], ["train.steps=abc"], ["train.steps=0"], ["--config", "configs/nope.yaml"]):
        proc = run_cmd([sys.executable, "-X", "importtime", "train.py", *args])
        imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
        assert proc.returncode == 2 and "error: " in proc.stderr and "Traceback" not in proc.stderr, args
        assert imported and not any(name.split(".")[0] == "torch" for name in imported), args
    control = run_cmd([sys.executable, "-X", "importtime", "train.py", "--print-config"])  # a valid config: the gate
    assert any(line.split("|")[-1].strip() == "torch" for line in control.stderr.splitlines())  # imports torch


def test_a_flag_for_a_config_key_names_the_override() -> None:
    proc = python_train("--steps", "300")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unrecognized arguments: --steps" in proc.stderr and "e.g. train.steps=300" in proc.stderr


def test_idle_openmp_threads_sleep_and_a_log_file_gets_plain_lines(run_dir: Path) -> None:
    """train.py sets OMP_WAIT_POLICY=PASSIVE unless the environment says otherwise (the plan line names it); output
    that is no terminal gets one plain line per log interval and no carriage return."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cmd = [sys.executable, "train.py", *BASE, f"run.dir={run_dir}", "train.steps=4", *TINY, "log.every=2"]
    proc = subprocess.run(cmd,
                          cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(OpenMP waits passive)" in proc.stdout and "\r" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[wgan-gp] step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    metrics = read_metrics(run_dir)
    assert f"loss_d {metrics[-1]['loss_d']:.4f}" in lines[-1]
    active = python_train(f"run.dir={run_dir}-active", "train.steps=1", *TINY, env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert active.returncode == 0 and "(OpenMP waits active)" in active.stdout


def test_bench_contention_runs_both_wait_policies_quiet_and_loaded(tmp_path: Path) -> None:
    """python -m trainer.bench --contention N starts its own load, runs train.py under both policies and reports the
    ratios; the metrics of all four runs are identical (the policy changes how threads wait, not what they add)."""
    out = tmp_path / "contention.json"
    cmd = [sys.executable, "-m", "trainer.bench", "--contention", "1", "--contention-steps", "2", "--out", str(out)]
    proc = run_cmd([*cmd, *TINY])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = __import__("json").loads(out.read_text())
    assert res["metrics_identical"] is True and set(res["ratio"]) == {"ACTIVE", "PASSIVE"}
    assert len(res["seconds"]) == 4 and all(v > 0 for v in res["seconds"].values())
    assert "ratio" in proc.stdout and "metrics identical across all 4 runs: True" in proc.stdout


def test_a_run_ends_with_a_summary_its_curves_and_real_images_beside_its_own(run_dir: Path) -> None:
    """The end of a digits run: the lines a person reads (wall time, it/s, the Wasserstein estimate, a classifier FD
    beside the held-out digits' own, the files to open), summary.json's "run" with the same figures, curves.png
    and the last grid beside real digits, each image at 64 px or more."""
    from PIL import Image

    keys = [a for a in TINY if not a.startswith("eval.at_end")]
    proc = python_train(f"run.dir={run_dir}", "train.steps=6", *keys, "log.every=2", "log.num_samples=16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((run_dir / "summary.json").read_text())["run"]
    last = read_metrics(run_dir)[-1]
    assert run["steps_trained"] == 6 and run["step"] == 6 and run["wasserstein"] == last["wasserstein"]
    q = run["quality"]
    assert q["metric"] == "fd_classifier" and q["num"] == 300 and 0 < q["baseline"] < q["value"]  # 6 steps: far off
    assert q["ratio_to_baseline"] == pytest.approx(q["value"] / q["baseline"])
    out = proc.stdout
    assert "[wgan-gp] done: 6 steps in " in out and f"final Wasserstein estimate {last['wasserstein']:.4f}" in out
    assert f"classifier FD {q['value']:.4g} on 300 samples; real digits against real: {q['baseline']:.4g}" in out
    assert f"python -m trainer.sample {run_dir}" in out and str(run_dir / "curves.png") in out
    with Image.open(run_dir / "curves.png") as curves:
        assert curves.size[0] > 3 * curves.size[1]  # one panel per curve family, side by side
    with Image.open(run_dir / "samples" / "final-vs-real.png") as pair:
        assert pair.size[0] >= 2 * 4 * 64 and pair.size[1] >= 4 * 64  # 4x4 generated, 4x4 real, 64 px each
    with Image.open(run_dir / "samples" / "step-00000006.png") as grid:
        assert grid.size[1] >= 4 * 64


def test_the_bare_default_trains_real_digits_and_ends_with_their_held_out_baseline(run_dir: Path) -> None:
    """`python train.py` with nothing but a shorter run: configs/default.yaml's 28x28 digits on the MLP pair, its
    quality figure on as many samples as mnist5k holds out (1,000) beside the held-out digits' own FD."""
    proc = python_train(f"run.dir={run_dir}", "train.steps=3", "log.every=1", "checkpoint.every=0", default=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q = json.loads((run_dir / "summary.json").read_text())["run"]["quality"]
    assert q["metric"] == "fd_classifier" and q["num"] == 1000 and 0 < q["baseline"] < q["value"]
    line = f"classifier FD {q['value']:.4g} on 1,000 samples; real mnist5k against real: {q['baseline']:.4g}"
    assert line in proc.stdout and "/10 classes" in proc.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["name"] == "mnist5k"


def test_a_toy_run_ends_with_its_w1_beside_the_real_floor(run_dir: Path) -> None:
    toy = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
    keys = [a for a in TINY if not a.startswith("eval.at_end")]
    proc = python_train(f"run.dir={run_dir}", "train.steps=3", *keys, *toy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q = json.loads((run_dir / "summary.json").read_text())["run"]["quality"]
    from trainer.metrics.toy import real_w1

    assert q["metric"] == "w1" and q["num"] == 2000 and q["baseline"] == pytest.approx(real_w1("8gaussians", 2000, 1))
    assert q["value"] > q["baseline"] and "modes_covered" in q and "W1 to real points" in proc.stdout
