"""trainer.compare on two real runs' metrics.jsonl, and the W&B sweep files under configs/sweeps/."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, ok, python_train, read_metrics
from omegaconf import OmegaConf
from PIL import Image

from trainer import cli, compare
from trainer.core.gate import configure
from trainer.evaluate import family

TOY = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
SHORT = ["train.steps=3", "train.n_critic=1", "log.every=1", "log.sample_every=0", "checkpoint.every=0"]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """WGAN-GP and weight-clipped WGAN on 8 Gaussians, 3 steps each, trained side by side by the real train.py."""
    root = tmp_path_factory.mktemp("compare-runs")
    jobs = {"wgan-gp": ["loss.name=wgan-gp"], "wgan-clip": ["loss.name=wgan-clip"]}
    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(python_train, f"run.dir={root / n}", *TOY, *SHORT, *extra) for n, extra in jobs.items()]
        for proc in done:
            ok(proc.result())
    return [root / name for name in jobs]


def _row(table: str, label: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [label])


def test_compare_draws_the_runs_and_prints_their_final_values(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "figures" / "compare.png"
    metrics = ["loss_d", "wasserstein", "penalty"]
    assert compare.main([*map(str, two_runs), "--metric", *metrics, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["run", "step", *metrics]
    for run in two_runs:
        last = read_metrics(run)[-1]
        assert last["step"] == 3
        row = _row(table, run.name)
        assert row[1] == "3" and row[2] == f"{last['loss_d']:.6g}" and row[3] == f"{last['wasserstein']:.6g}"
    assert _row(table, "wgan-clip")[4] == "-"  # no penalty without a penalty term
    assert _row(table, "wgan-gp")[4] == f"{read_metrics(two_runs[0])[-1]['penalty']:.6g}"
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (360, 1500, 3)  # three subplots side by side, 5 x 3.6 inches each at 100 dpi
    for colour in (TAB_BLUE, TAB_ORANGE):  # both runs are drawn
        assert (np.abs(image.astype(int) - colour).sum(-1) < 30).sum() > 50, colour


def test_compare_names_unknown_metrics_and_non_run_folders(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "c.png"
    assert compare.main([*map(str, two_runs), "--metric", "loss_d", "fid", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'fid'" in err and "loss_d, loss_g" in err and "wasserstein" in err and not out.exists()
    assert compare.main([str(two_runs[0]), str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'metrics.jsonl'} does not exist" in err and "not a run folder" in err


def test_sweep_files_cover_the_papers_comparisons() -> None:
    swept = {}
    for path in SWEEPS:
        swept.update(yaml.safe_load(path.read_text())["parameters"])
    assert set(swept["loss.name"]["values"]) == {"wgan-gp", "wgan-clip", "gan"}
    assert 10.0 in swept["loss.gp_weight"]["values"] and len(swept["loss.gp_weight"]["values"]) >= 3
    assert 5 in swept["train.n_critic"]["values"] and len(swept["train.n_critic"]["values"]) >= 3


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_commands_are_valid_train_py_invocations(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds every grid point's command the way the W&B agent does and parses it with train.py's own CLI."""
    wandb_sweeps = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] == "grid" and spec["program"] == "train.py"
    assert spec["metric"]["name"] in {"eval_fd_classifier", "eval_is_classifier"}  # as the loop logs evaluate()'s
    command = spec["command"]
    assert command[:3] == ["${env}", "${interpreter}", "${program}"] and command[-1] == "${args_no_hyphens}"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    keys = list(spec["parameters"])
    run_dirs = set()
    for i, values in enumerate(itertools.product(*(spec["parameters"][k]["values"] for k in keys))):
        monkeypatch.setenv("WANDB_RUN_ID", f"run{i}")
        grid_point = {"args": {k: {"value": v} for k, v in zip(keys, values, strict=True)}}
        args = wandb_sweeps.create_sweep_command_args(grid_point)
        parsed = cli.parse_args([*command[3:-1], *args["args_no_hyphens"]])
        cfg = configure(parsed.config, tuple(parsed.overrides))
        for key, value in zip(keys, values, strict=True):
            assert OmegaConf.select(OmegaConf.structured(cfg), key) == value
        assert cfg.log.tracker == "wandb" and cfg.eval.every > 0 and family(cfg.data.name) == "classifier"
        run_dirs.add(cfg.run.dir)
    assert run_dirs == {f"runs/sweeps/sweep1/run{i}" for i in range(len(run_dirs))} and len(run_dirs) > 1
