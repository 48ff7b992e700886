"""Evaluation: metrics against closed forms, the digits classifier, Inception plumbing, the CLI on real runs."""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import TINY, ok, python_train, run_cmd
from scipy import linalg

from trainer import evaluate, fetch_weights
from trainer.data.registry import DATASETS, load_digits_uint8
from trainer.data.toys import eight_gaussians, twentyfive_gaussians
from trainer.errors import TrainerError
from trainer.metrics import feature_classifier, inception
from trainer.metrics.moments import Moments, ScoreSums, frechet_distance
from trainer.metrics.toy import MODES, high_quality_counts, mode_summary, w1_exact

TOY = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
P_WITHIN_3_STD_2D = 1 - math.exp(-4.5)  # chi-square with 2 degrees of freedom below 9
TOY_KEYS = {"w1", "modes_covered", "high_quality"}
DIGIT_KEYS = {"fd_classifier", "is_classifier", "classes_covered", "precision", "recall", "density", "coverage"}


@pytest.fixture
def one_thread():
    """Small CPU networks train far faster on one thread when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_w1_of_a_translated_copy_is_the_translation_length() -> None:
    rng = torch.Generator().manual_seed(0)
    points = torch.randn(400, 2, generator=rng, dtype=torch.float64)
    shifted = (points + torch.tensor([0.3, -0.4], dtype=torch.float64))[torch.randperm(400, generator=rng)]
    assert w1_exact(shifted, points) == pytest.approx(0.5, rel=1e-9)


def test_w1_equals_brute_force_over_all_permutations() -> None:
    rng = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 2, generator=rng), torch.rand(6, 2, generator=rng) * 3
    cost = torch.cdist(a.double(), b.double())
    brute = min(float(cost[range(6), list(perm)].mean()) for perm in itertools.permutations(range(6)))
    assert w1_exact(a, b) == pytest.approx(brute, rel=1e-12)
    assert w1_exact(a, b) < float(cost.diagonal().mean())  # the identity assignment is not the optimum here


@pytest.mark.parametrize(
    "name, sample, modes", [("8gaussians", eight_gaussians, 8), ("25gaussians", twentyfive_gaussians, 25)]
)
def test_real_toy_points_cover_every_mode_with_high_quality(name: str, sample, modes: int) -> None:
    points = sample(5000, generator=torch.Generator().manual_seed(2))
    centres, std = MODES[name]
    counts = high_quality_counts(points, centres, std)
    assert counts.shape == (modes,) and counts.min() > 5000 / modes * 0.7
    summary = mode_summary(counts, 5000)
    assert summary["modes_covered"] == modes
    assert summary["high_quality"] == pytest.approx(P_WITHIN_3_STD_2D, abs=0.006)


def test_a_collapsed_generator_covers_one_mode_and_off_mode_points_none() -> None:
    centres, std = MODES["8gaussians"]
    collapsed = centres[3] + std * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    summary = mode_summary(high_quality_counts(collapsed, centres, std), 2000)
    assert summary["modes_covered"] == 1
    assert summary["high_quality"] == pytest.approx(P_WITHIN_3_STD_2D, abs=0.01)
    between = (centres[0] + centres[1]) / 2 + 0 * collapsed  # midway between two modes: no quality, no mode
    assert mode_summary(high_quality_counts(between, centres, std), 2000) == {"modes_covered": 0, "high_quality": 0}


def test_frechet_distance_matches_closed_forms() -> None:
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    # Diagonal covariances commute: d^2 = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    want = 5.0 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(want, rel=1e-10)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = x @ x.T + 0.1 * np.eye(5), y @ y.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    scipy_fd = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    fd = frechet_distance(*(torch.from_numpy(t) for t in (mu1, c1, mu2, c2)))
    assert fd == pytest.approx(scipy_fd, rel=1e-8) and fd > 1


def test_moments_sum_over_chunks_to_the_sample_mean_and_covariance() -> None:
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3 + 7
    moments = Moments.zeros(4)
    for chunk in x.split(70):  # uneven chunks, as processes and batches produce them
        moments.add(chunk)
    mean, cov = moments.mean_cov()
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-9)


def test_inception_score_matches_its_definition() -> None:
    confident = 40.0 * torch.eye(4)[torch.arange(400) % 4]  # sure of one class each, classes balanced: IS = 4
    sums = ScoreSums.zeros(1, 4)
    sums.add(confident, torch.arange(400), 400)
    assert sums.score()[0] == pytest.approx(4.0, rel=1e-6)
    logits = torch.randn(200, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    p = torch.softmax(logits, 1).numpy()
    kl = [(p[s] * np.log(p[s] / p[s].mean(0))).sum(1).mean() for s in (slice(0, 100), slice(100, 200))]
    sums = ScoreSums.zeros(2, 5)
    for part in torch.arange(200).split(64):
        sums.add(logits[part], part, 200)
    mean, std = sums.score()
    assert mean == pytest.approx(np.exp(kl).mean(), rel=1e-10) and std == pytest.approx(np.exp(kl).std(), rel=1e-8)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A cache dir holding the digits 8px classifier, trained here once; and the CPU seconds that took.

    CPU time on one thread, not wall time, so that other jobs sharing the machine do not decide the test.
    """
    cache, before = tmp_path_factory.mktemp("cache"), torch.get_num_threads()
    torch.set_num_threads(1)  # small CPU networks train far faster on one thread when the two cores are shared
    start = time.process_time()
    feature_classifier.load_or_train("digits", "data", 8, str(cache))
    torch.set_num_threads(before)
    return cache, time.process_time() - start


def test_digits_classifier_trains_accurately_and_caches(digits_cache: tuple[Path, float]) -> None:
    cache, seconds = digits_cache
    path = feature_classifier.cache_path(str(cache), "digits", 8)
    ref = feature_classifier.load_reference(path)
    assert ref.accuracy > 0.9 and seconds < 20, (ref.accuracy, seconds)
    assert ref.real_cov.shape == (feature_classifier.FEATURES,) * 2
    again = feature_classifier.load_or_train("digits", "no-such-root", 8, str(cache))  # from the cache: no data read
    assert again.accuracy == ref.accuracy and torch.equal(again.real_mean, ref.real_mean)
    # The real images sit at distance ~0 from their own statistics; noise images far away.
    train = DATASETS["digits"].load("data", False)[0]  # the training split the reference was computed on
    real = feature_classifier.feature_moments(ref.model, train).mean_cov()
    noise = feature_classifier.feature_moments(ref.model, torch.randint(0, 256, (500, 1, 8, 8), dtype=torch.uint8))
    assert frechet_distance(*real, ref.real_mean, ref.real_cov) < 1e-6
    assert frechet_distance(*noise.mean_cov(), ref.real_mean, ref.real_cov) > 1.0


def test_missing_inception_weights_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(TrainerError) as err:
        inception.weights_path(None)
    message = str(err.value)
    assert "python -m trainer.fetch_weights" in message and "eval.inception_weights=" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILE) in message
    with pytest.raises(TrainerError, match="python -m trainer.fetch_weights"):
        inception.weights_path(str(tmp_path / "elsewhere.pth"))


def _random_inception_weights(path: Path) -> Path:
    """The real architecture with random weights: exercises the whole FID/KID/IS path offline."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None):
        with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
            net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_inception_metrics_run_end_to_end_on_random_weights(tmp_path: Path, one_thread) -> None:
    weights = _random_inception_weights(tmp_path / inception.WEIGHTS_FILE)
    assert fetch_weights.main(["--out", str(weights)]) == 0  # present: verified by loading, no download
    net = inception.load_extractor(inception.weights_path(str(weights)))
    real = load_digits_uint8()[:6]
    source = mock.Mock(return_value=(6, lambda index: real[index]))
    cache = tmp_path / "cache" / "digits.safetensors"
    stats = inception.real_statistics(net, source, cache, torch.device("cpu"))
    assert cache.is_file() and stats.moments.count == 6 and stats.kept.shape == (6, inception.POOL)
    cached = inception.real_statistics(net, source, cache, torch.device("cpu"))
    assert source.call_count == 1 and torch.equal(cached.moments.outer, stats.moments.outer)
    fake = torch.rand(5, 1, 8, 8) * 2 - 1
    fake_stats = inception.measure(net, [(fake[:3], torch.arange(3)), (fake[3:], torch.arange(3, 5))], 5, "cpu")
    metrics = inception.inception_metrics(stats, fake_stats)
    assert set(metrics) == {"fid", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["fid"] > 0


def test_evaluate_leaves_global_rng_and_training_mode_alone() -> None:
    from trainer.core.gate import configure
    from trainer.nets.models import build_models

    cfg = configure(None, ("data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=8"))
    generator, _ = build_models("toy", 2, 8, 0, 8)
    state = torch.get_rng_state()
    metrics = evaluate.evaluate(generator.train(), cfg, None, 300)
    assert set(metrics) == TOY_KEYS and generator.training and torch.equal(torch.get_rng_state(), state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy run and a digits run of the real train.py, 2 steps each, trained side by side."""
    root = tmp_path_factory.mktemp("eval-runs")
    jobs = {"toy": [*TOY, "train.steps=2", "log.sample_every=0"], "digits": ["train.steps=2", *TINY]}
    with ThreadPoolExecutor(2) as pool:
        done = {k: pool.submit(python_train, f"run.dir={root / k}", *args) for k, args in jobs.items()}
        for proc in done.values():
            ok(proc.result())
    return {k: root / k for k in jobs}


def _evaluate_in_process(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """`python -m trainer.evaluate ARGS` in this process (its main(), without the interpreter start)."""
    assert evaluate.main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _evaluate_torchrun(*args: str, cache: Path) -> dict:
    """`torchrun --nproc_per_node 2 -m trainer.evaluate -- ARGS` (`--` keeps torchrun off --num: --numa-binding)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = ok(run_cmd([*cmd, "-m", "trainer.evaluate", "--", *args], env={"ACCELERATE_USE_CPU": "1"}))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_cli_on_a_toy_run_agrees_across_two_processes(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = (str(runs["toy"]), "--num", "601", "--cache-dir", str(tmp_path))  # 601: ranks get 300 and 301
    one = _evaluate_in_process(capsys, *args)
    assert TOY_KEYS <= one.keys() and one["step"] == 2 and one["num"] == 601 and one["world_size"] == 1
    assert 0 < one["w1"] < 10 and 0 <= one["high_quality"] <= 1
    two = _evaluate_torchrun(*args, cache=tmp_path)
    assert two["world_size"] == 2
    assert two["w1"] == pytest.approx(one["w1"], rel=1e-6)
    assert (two["modes_covered"], two["high_quality"]) == (one["modes_covered"], one["high_quality"])


def test_evaluate_cli_on_a_digits_run_agrees_across_two_processes(
    runs: dict[str, Path], digits_cache: tuple[Path, float], capsys: pytest.CaptureFixture
) -> None:
    args = (str(runs["digits"]), "--num", "1001", "--cache-dir", str(digits_cache[0]))
    one = _evaluate_in_process(capsys, *args)
    assert DIGIT_KEYS <= one.keys() and one["num"] == 1001 and one["world_size"] == 1
    assert one["fd_classifier"] > 0 and 1 <= one["is_classifier"] <= 10
    two = _evaluate_torchrun(*args, cache=digits_cache[0])
    assert two["world_size"] == 2
    for key in DIGIT_KEYS:  # feature moments and score sums all-reduced over the two ranks' halves
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_evaluate_cli_without_inception_weights_stops_with_the_fix(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert evaluate.main([str(runs["digits"]), "--inception", "--num", "10", "--cache-dir", str(tmp_path)]) == 2
    assert "python -m trainer.fetch_weights" in capsys.readouterr().err
    assert not (tmp_path / "classifiers").exists()  # refused before any other work
    assert evaluate.main([str(tmp_path / "no-run")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
