"""The converged generators shipped in models/ (python -m trainer.reproduce --budget converged): each loads with
GANGenerator.from_pretrained and, scored again here from its own samples, meets the target its card claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from trainer.converged import TARGETS
from trainer.data.toys import MODES
from trainer.export import GANGenerator
from trainer.metrics.toy import high_quality_counts, mode_summary
from trainer.recipes import LOSSES

SHIPPED = sorted(p for p in (ROOT / "models").glob("*") if (p / "model.safetensors").is_file())
TOY_NUM = 2000  # the budget's sample count (trainer.converged.TOY_NUM)


def progress_of(folder: Path) -> dict:
    """The budget's record of the run behind models/RECIPE-LOSS (results/converged/RECIPE/LOSS/progress.json)."""
    loss = next(loss for loss in LOSSES if folder.name.endswith(f"-{loss}"))
    recipe = folder.name[: -len(loss) - 1]
    return json.loads((ROOT / "results" / "converged" / recipe / loss / "progress.json").read_text())


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_generator_scores_again_as_its_run_did(folder: Path) -> None:
    generator = GANGenerator.from_pretrained(str(folder))
    progress = progress_of(folder)
    last = progress["chunks"][-1]["metrics"]
    assert f"met at generator step {progress['chunks'][-1]['step']:,}" in (folder / "README.md").read_text() or (
        not progress.get("converged")
    )
    if generator.data not in MODES:
        pytest.skip(f"{generator.data}: no modes to count; re-scored by trainer.metrics.evaluate in its own test")
    points = generator.sample(TOY_NUM, seed=0)  # the scorer's noise: seed 0, TOY_NUM draws
    centres, std = MODES[generator.data]
    mine = mode_summary(high_quality_counts(points, centres, std), TOY_NUM)
    assert mine == {"modes_covered": last["modes_covered"], "high_quality": last["high_quality"]}
    if progress.get("converged"):
        assert TARGETS[generator.data].met({**last, **mine}, progress["floor"])


def test_the_shipped_8_gaussians_generator_covers_every_mode() -> None:
    """The headline result: the paper's toy at its settings, converged (8/8 modes, >= 90% within 3 std)."""
    folder = ROOT / "models" / "8gaussians-wgan-gp"
    if not folder.is_dir():
        pytest.skip("not shipped in this checkout")
    points = GANGenerator.from_pretrained(str(folder)).sample(TOY_NUM, seed=0)
    summary = mode_summary(high_quality_counts(points, *MODES["8gaussians"]), TOY_NUM)
    assert summary["modes_covered"] == 8 and summary["high_quality"] >= 0.9
    control = torch.randn(TOY_NUM, 2, generator=torch.Generator().manual_seed(0))  # unconverged: a blob
    assert mode_summary(high_quality_counts(control, *MODES["8gaussians"]), TOY_NUM)["modes_covered"] < 8


DIGITS = [p for p in SHIPPED if json.loads((p / "config.json").read_text())["data"] == "mnist5k"]


@pytest.mark.parametrize("folder", DIGITS, ids=[p.name for p in DIGITS])
def test_a_shipped_digits_generator_scores_again_as_its_run_did(folder: Path) -> None:
    """Real digits: the exported generator scored again by trainer.metrics.evaluate (its own feature classifier,
    trained here if not cached) lands on the classifier FD its run recorded, and its verdict on the target holds."""
    from trainer.core.gate import configure
    from trainer.metrics.evaluate import evaluate

    progress = progress_of(folder)
    last = progress["chunks"][-1]["metrics"]
    cfg = configure(str(ROOT / progress["config"]), ("seed=0",))
    scores = evaluate(GANGenerator.from_pretrained(str(folder)), cfg, None, 1000, "cpu")  # the budget's DIGITS_NUM
    assert scores["classes_covered"] == last["classes_covered"]
    assert scores["fd_classifier"] == pytest.approx(last["fd_classifier"], rel=0.05)  # a classifier retrained here
    assert TARGETS["mnist5k"].met(scores, progress["floor"]) == bool(progress.get("converged"))


SEED_SPREAD = ROOT / "docs" / "seeds-mnist5k-conv-8k.json"  # scripts/seed_spread.py


def test_each_training_seed_of_the_conv_digits_recipe_scores_again_as_recorded() -> None:
    """The conv digits recipe trained with seeds 0, 1 and 2 (docs/sample-quality.md): each exported generator,
    scored again by trainer.metrics.evaluate with noise seed 0, lands on the classifier FD and classes recorded."""
    from trainer.core.gate import configure
    from trainer.metrics.evaluate import evaluate

    record = json.loads(SEED_SPREAD.read_text())
    assert sorted(run["training_seed"] for run in record["runs"]) == [0, 1, 2]
    cfg = configure(str(ROOT / record["config"]), ("seed=0",))
    for run in record["runs"]:
        assert run["noise_seeds"][0] == 0
        scores = evaluate(GANGenerator.from_pretrained(str(ROOT / run["generator"])), cfg, None, record["num"], "cpu")
        assert scores["classes_covered"] == run["classes_covered"][0]
        assert scores["fd_classifier"] == pytest.approx(run["fd_classifier"][0], rel=0.05), run["generator"]


SPREAD = [p for p in SHIPPED if json.loads((p / "config.json").read_text())["data"] not in (*MODES, "mnist5k")]


@pytest.mark.parametrize("folder", SPREAD, ids=[p.name for p in SPREAD])
def test_a_shipped_toy_without_modes_scores_its_w1_again(folder: Path) -> None:
    """A toy scored by its W1 (the Swiss roll): the exported generator, scored again by trainer.metrics.evaluate on
    the budget's TOY_NUM samples, gives the exact W1 its run recorded, and the same verdict on the target."""
    from trainer.core.gate import configure
    from trainer.metrics.evaluate import evaluate

    progress = progress_of(folder)
    last = progress["chunks"][-1]["metrics"]
    cfg = configure(str(ROOT / progress["config"]), ("seed=0",))
    scores = evaluate(GANGenerator.from_pretrained(str(folder)), cfg, None, TOY_NUM, "cpu")
    assert scores["w1"] == pytest.approx(last["w1"], rel=1e-5)
    assert TARGETS[progress["dataset"]].met(scores, progress["floor"]) == bool(progress.get("converged"))
