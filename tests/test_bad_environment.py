"""Round 3 of the bad-input matrix: the launchers' environment variables, absurd sizes, a DeepSpeed file that is
not JSON, a --config that is a folder or a YAML scalar. Each through the real train.py: exit 2, the message naming
the problem and the fix, no traceback, no run folder left behind, and before torch is imported where it can be."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_cmd

CASES = [  # (name, environment, arguments, words the message holds)
    ("world-size-text", {"WORLD_SIZE": "abc"}, [], ["WORLD_SIZE='abc' is not a whole number", "unset WORLD_SIZE"]),
    ("local-rank-text", {"LOCAL_RANK": "x"}, [], ["LOCAL_RANK='x'"]),
    ("stale-rank", {"RANK": "1"}, [], ["RANK=1 of WORLD_SIZE=1", "unset RANK"]),
    ("stale-rank-bad-key", {"RANK": "1"}, ["train.stepz=1"], ["unknown config key 'train.stepz'"]),  # not silent
    ("rank-past-world", {"RANK": "3", "WORLD_SIZE": "2"}, [], ["RANK=3 of WORLD_SIZE=2"]),
    ("master-port", {"MASTER_PORT": "99999"}, [], ["MASTER_PORT='99999' is no TCP port"]),
    ("env-precision", {"ACCELERATE_MIXED_PRECISION": "fp64"}, [], ["ACCELERATE_MIXED_PRECISION='fp64'", "bf16"]),
    ("wandb-mode", {"WANDB_MODE": "bogus"}, ["log.tracker=wandb"], ["WANDB_MODE='bogus' is not a W&B mode"]),
    ("config-folder", {}, ["--config", "configs"], ["'configs' is a folder, not a file", "configs/digits.yaml"]),
    ("run-dir-name-too-long", {}, ["run.dir=/tmp/" + "x" * 300], ["run.dir: its part", "is 300 bytes"]),
    ("data-root-too-long", {}, ["data.root=" + "d" * 256], ["data.root: its part"]),
    (
        "wandb-project-too-long",
        {},
        ["log.tracker=wandb", "log.project=" + "p" * 200],
        ["log.project is 200 characters"],
    ),
    ("wandb-tag-too-long", {}, ["log.tracker=wandb", "log.tags=[" + "t" * 80 + "]"], ["log.tags: the tag"]),
]


@pytest.mark.parametrize("name,env,args,words", CASES, ids=[c[0] for c in CASES])
def test_bad_environment_and_sizes_are_one_message(
    tmp_path: Path, name: str, env: dict, args: list, words: list
) -> None:
    run = tmp_path / "run"
    proc = run_cmd([sys.executable, "-X", "importtime", "train.py", f"run.dir={run}", "train.steps=1", *args], env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert len(errors) == 1 and all(w in errors[0] for w in words), errors
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported  # refused by the parser, the launcher check or the gate's first concern
    assert not run.exists()


def test_sizes_past_pytorchs_arithmetic_are_one_message(tmp_path: Path) -> None:
    """A width that overflows the memory estimate's own shape arithmetic (it builds the pair on the meta device)."""
    proc = run_cmd([sys.executable, "train.py", "model.width=1000000000000", f"run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "this config is beyond any machine" in proc.stderr and "model.width=1000000000000" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_yaml_scalar_and_a_deepspeed_file_that_is_not_json(tmp_path: Path) -> None:
    scalar, ds = tmp_path / "scalar.yaml", tmp_path / "ds.json"
    scalar.write_text("5\n")
    ds.write_text("{\n")
    proc = run_cmd([sys.executable, "train.py", "--config", str(scalar)])
    assert proc.returncode == 2 and "holds a single int value, not a mapping of sections" in proc.stderr
    proc = run_cmd([sys.executable, "train.py", f"train.deepspeed={ds}", f"run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"the DeepSpeed config {ds} is not a JSON object" in proc.stderr and not (tmp_path / "run").exists()


def test_a_resume_at_another_world_size_says_what_changes(tmp_path: Path) -> None:
    """Not an error (a job may come back on fewer GPUs), but said once with what changes: the global batch, the data
    order and the noise streams."""
    from conftest import ok, python_train, torchrun_train

    toy = ["--config", "configs/8gaussians.yaml", "model.width=16", "log.every=2", "log.sample_every=0",
           "eval.at_end=false", f"run.dir={tmp_path / 'run'}"]  # fmt: skip
    ok(torchrun_train(2, *toy, "train.steps=2", "checkpoint.every=2"))
    resumed = ok(python_train(*toy, "train.steps=4", "run.resume=latest"))
    assert resumed.stdout.count("[wgan-gp] resuming a 2-process checkpoint with 1 processes") == 1
    assert "global critic batch becomes 1 x 256 = 256 (was 512)" in resumed.stdout
    same = ok(python_train(*toy, "train.steps=6", "run.resume=latest"))
    assert "process checkpoint with" not in same.stdout  # 1 -> 1: nothing to say


def test_a_refused_value_from_the_environment_is_shown_as_its_interpolation(tmp_path: Path) -> None:
    """The gate quotes what it refuses; a value read from the environment may be a secret, so it is quoted as the
    `${...}` text the user wrote. Control: the same value given directly is quoted as it is."""
    secret = "hunter2-zz-token"
    for key in ("train.precision", "log.tracker", "data.name", "optim.schedule"):
        proc = run_cmd([sys.executable, "train.py", f"{key}=${{oc.env:MY_SECRET}}"], env={"MY_SECRET": secret})
        assert proc.returncode == 2 and secret not in proc.stdout + proc.stderr, key
        assert f"{key}='${{oc.env:MY_SECRET}}' is not a valid choice" in proc.stderr, proc.stderr
    direct = run_cmd([sys.executable, "train.py", f"train.precision={secret}"])
    assert f"train.precision='{secret}' is not a valid choice" in direct.stderr


def test_a_failed_first_start_leaves_no_folder_but_a_failed_later_one_keeps_its_run(tmp_path: Path) -> None:
    """NaN gradients from step 1 stop a fresh run before it logs or saves anything: the folder it created is gone.
    The same fault after a logged step (and in a folder that existed) keeps everything."""
    from conftest import TINY, python_train, read_metrics

    nan = {"WGAN_GP_FAULT_NAN_AT": ",".join(map(str, range(1, 9)))}
    fresh = tmp_path / "fresh"
    proc = python_train(f"run.dir={fresh}", "train.steps=8", *TINY, "train.max_nonfinite=2", "log.every=50", env=nan)
    assert proc.returncode == 2 and "non-finite" in proc.stderr and not fresh.exists()
    kept = tmp_path / "kept"
    late = {"WGAN_GP_FAULT_NAN_AT": ",".join(map(str, range(2, 9)))}
    proc = python_train(f"run.dir={kept}", "train.steps=8", *TINY, "train.max_nonfinite=2", env=late)
    assert proc.returncode == 2 and [m["step"] for m in read_metrics(kept)][:1] == [1]  # step 1 was logged: kept
