"""The real train.py end to end: offline default artefacts, sampling, bitwise resume, run-folder protection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import TINY, accelerate_train, ok, python_train, read_metrics, run_cmd
from PIL import Image
from safetensors.torch import load_file

EXPECTED_KEYS = {
    "step",
    "images_seen",
    "loss_d",
    "loss_g",
    "wasserstein",
    "penalty",
    "grad_norm",
    "d_real",
    "imgs_per_s",
}


def test_offline_default_leaves_grid_metrics_checkpoint(run_dir: Path) -> None:
    """The no-argument default (configs/default.yaml, only shortened) through `accelerate launch`: 28x28 digits on the
    MLP pair; grid PNG, metrics.jsonl, checkpoint."""
    ok(
        accelerate_train(
            f"run.dir={run_dir}",
            "train.steps=6",
            "log.every=3",
            "log.sample_every=3",
            "checkpoint.every=3",
            "eval.at_end=false",  # tests/test_first_hour.py checks the quality figure
            default=True,
        )
    )
    grid = Image.open(run_dir / "samples" / "step-00000006.png")
    assert grid.size == (8 * 84 + 9 * 2, 8 * 84 + 9 * 2)  # 64 digits of 28x28 shown at 84 px, torchvision's padding
    assert (run_dir / "samples" / "step-00000003.png").is_file()
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [3, 6]
    for record in metrics:
        assert EXPECTED_KEYS <= record.keys()
        assert all(np.isfinite(record[k]) for k in EXPECTED_KEYS)
        assert record["world_size"] == 1
    assert metrics[-1]["images_seen"] == 6 * 5 * 64  # steps x n_critic x batch
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-00000003", "step-00000006"]
    last = run_dir / "checkpoints" / "step-00000006"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data"]["cursor"] > 0
    written = (last / "config.yaml").read_text()
    assert "name: mlp" in written and "name: mnist5k" in written and "schedule_steps: 8000" in written
    assert (run_dir / "config.yaml").read_text() == written
    ema, live = load_file(str(last / "ema.safetensors")), load_file(str(last / "model.safetensors"))
    assert set(ema) == {f"model.{k}" for k in live} | {"updates"}
    assert torch.equal(load_file(str(last / "generator.safetensors"))["body.0.weight"], ema["model.body.0.weight"])
    assert ema["model.body.0.weight"].shape == (128, 100)  # z_dim 100 into the 128-wide MLP


def test_sample_cli_writes_npy_and_png(run_dir: Path, tmp_path: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY))
    out = tmp_path / "s.npy"
    ok(run_cmd([sys.executable, "-m", "trainer.sample", str(run_dir), "--num", "37", "--out", str(out)]))
    samples = np.load(out)
    assert samples.shape == (37, 1, 8, 8) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    ok(run_cmd([sys.executable, "-m", "trainer.sample", str(run_dir), "--num", "16", "--out", str(tmp_path / "s.png")]))
    assert Image.open(tmp_path / "s.png").size == (4 * 64 + 5 * 2, 4 * 64 + 5 * 2)
    missing = run_cmd([sys.executable, "-m", "trainer.sample", str(tmp_path / "nothing"), "--out", str(out)])
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    files = ["model.safetensors", "model_1.safetensors", "ema.safetensors"]
    return {f"{f}:{k}": v for f in files for k, v in load_file(str(ckpt / f)).items()}


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    """4 steps straight == 2 steps, stop, resume to 4: same weights bit for bit (CPU fp32), same logged losses."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(python_train(f"run.dir={straight}", "train.steps=4", *TINY))
    ok(python_train(f"run.dir={split}", "train.steps=2", *TINY))
    resumed = ok(python_train(f"run.dir={split}", "train.steps=4", "run.resume=latest", *TINY))
    assert "resuming from" in resumed.stdout and "train.steps" in resumed.stdout
    a, b = _weights(straight / "checkpoints" / "step-00000004"), _weights(split / "checkpoints" / "step-00000004")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The data position and the logged losses continue exactly, and no step is logged twice.
    state = [json.loads((d / "checkpoints/step-00000004/trainer_state.json").read_text()) for d in (straight, split)]
    assert state[0]["data"] == state[1]["data"]
    ma, mb = read_metrics(straight), read_metrics(split)
    assert [m["step"] for m in mb] == [1, 2, 3, 4]
    assert [m["loss_d"] for m in ma] == [m["loss_d"] for m in mb]


def test_fresh_run_refuses_folder_with_checkpoints(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=1", *TINY))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    again = python_train(f"run.dir={run_dir}", "train.steps=1", *TINY)
    assert again.returncode == 2 and "run.resume=latest" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_resume_with_changed_architecture_is_refused(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=1", *TINY))
    changed = python_train(f"run.dir={run_dir}", "train.steps=2", "run.resume=latest", *TINY, "model.width=16")
    assert changed.returncode == 2 and "model.width" in changed.stderr and "Traceback" not in changed.stderr


def test_corrupt_and_missing_checkpoints_give_one_message(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=1", *TINY))
    missing = python_train(f"run.dir={run_dir}", f"run.resume={run_dir}/checkpoints/step-00000099", *TINY)
    assert missing.returncode == 2 and "no checkpoint there" in missing.stderr
    weights = run_dir / "checkpoints" / "step-00000001" / "model_1.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    corrupt = python_train(f"run.dir={run_dir}", "train.steps=2", "run.resume=latest", *TINY)
    assert corrupt.returncode == 2 and "is damaged" in corrupt.stderr and "model_1.safetensors" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
