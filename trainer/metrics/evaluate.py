"""Sample-quality metrics of a generator: toys (W1, modes), digits (classifier FD), images (Inception FID/KID/IS)."""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator, Optional

import torch
from accelerate import Accelerator

from trainer.accel.runtime import raw_module
from trainer.config import Config
from trainer.data.batches import to_unit_range
from trainer.data.files import resize_uint8
from trainer.data.registry import DATASETS
from trainer.data.toys import TOYS
from trainer.digest import cached_file_sha256
from trainer.metrics import feature_classifier, inception
from trainer.metrics.manifold import MAX_FEATURES, manifold_metrics
from trainer.metrics.moments import (
    Moments,
    ScoreSums,
    all_reduce_sum,
    frechet_distance,
    gather_rows,
    main_first,
    rank_world,
    shard_bounds,
)
from trainer.metrics.toy import COVERED_SHARE, MODES, W1_POINTS, high_quality_counts, mode_summary, w1_exact

BATCH = 500  # samples per generator forward pass


class Scores(dict):
    """Metric name -> float, as before, plus `provenance`: what the numbers were measured with (extractor and its
    weights' sha256, resize, sample counts, reference statistics' hash), so two records are known comparable or not."""

    def __init__(self, scores: Optional[dict] = None, provenance: Optional[dict] = None) -> None:
        super().__init__(scores or {})
        self.provenance = dict(provenance or {})


def family(dataset: str) -> str:
    """toy, classifier or inception: which metrics fit `dataset` (its registry entry's `metrics`).

    The 2-D toys get the exact W1 to real points, modes covered and the high-quality fraction (trainer.metrics.toy);
    digits, MNIST and Fashion-MNIST a Frechet distance and an Inception score in the feature space of a small
    classifier trained on the real data (trainer.metrics.feature_classifier); other image sets FID, KID and the
    Inception score (trainer.metrics.inception), which evaluate(with_inception=True) / --inception adds for any.
    """
    spec = DATASETS.get(dataset)
    return spec.metrics if spec is not None else "inception"


def generated_batches(
    generator: torch.nn.Module, z_dim: int, num: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the num samples, in batches: (samples in data space, their global indices).

    Rank r takes samples [r*num/world, (r+1)*num/world) of one noise stream seeded by `seed`, so the union over the
    ranks is exactly the single-process sample set; only statistics (or 2-D points, or KID features) are exchanged.

    A class-conditional generator (num_classes > 0) gets balanced labels: sample i is of class i % num_classes.
    """
    lo, hi = shard_bounds(num, *rank_world())
    noise = torch.randn(num, z_dim, generator=torch.Generator().manual_seed(seed))
    classes = int(getattr(generator, "num_classes", 0) or 0)
    for start in range(lo, hi, BATCH):
        index = torch.arange(start, min(start + BATCH, hi))
        labels = [(index % classes).to(device)] if classes else []
        yield generator(noise[index].to(device), *labels).float(), index


def toy_metrics(generator: torch.nn.Module, cfg: Config, num: int, seed: int, device: torch.device) -> dict:
    """w1 on the first min(num, 2000) samples (gathered; solved on rank 0); modes_covered, high_quality (reduced)."""
    rank, world = rank_world()
    batches = generated_batches(generator, cfg.model.z_dim, num, seed, device)
    shard = torch.cat([torch.zeros(0, 2, device=device)] + [x for x, _ in batches])
    n_w1 = min(num, W1_POINTS)
    counts = [max(0, min(hi, n_w1) - lo) for lo, hi in (shard_bounds(num, r, world) for r in range(world))]
    first = gather_rows(shard[: counts[rank]], counts).cpu()
    w1 = 0.0
    if rank == 0:  # an n x n assignment: seconds at n = 2,000 for a collapsed generator, so it is solved once
        w1 = w1_exact(first, TOYS[cfg.data.name](n_w1, generator=torch.Generator().manual_seed(seed + 1)))
    out = {"w1": float(all_reduce_sum(torch.tensor(w1, dtype=torch.float64, device=device))[0])}
    if cfg.data.name in MODES:
        centres, std = MODES[cfg.data.name]
        (per_mode,) = all_reduce_sum(high_quality_counts(shard, centres, std))
        out.update(mode_summary(per_mode.cpu(), num))
    provenance = {
        "extractor": "none (2-D points)",
        "num_real": n_w1,
        "num_fake": num,
        "reference": f"{cfg.data.name} sampler, seed {seed + 1} (W1 on the first {n_w1} points of each side)",
    }
    return Scores(out, provenance)


def kept_counts(num: int, keep: int) -> list[int]:
    """Per rank, how many of its samples are among the first `keep` of `num` (the ones whose features are gathered)."""
    world = rank_world()[1]
    return [max(0, min(hi, keep) - lo) for lo, hi in (shard_bounds(num, r, world) for r in range(world))]


def classifier_scores(
    ref: feature_classifier.Reference, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num: int, device
) -> dict[str, float]:
    """Collective: fd_classifier, is_classifier, classes_covered, precision, recall, density, coverage of `batches`
    (this process's share of num images in [-1, 1] with their global indices) against the reference's real images."""
    model = ref.model.to(device)
    classes = model.head.out_features  # the dataset's classes (its spec's num_classes when it was trained)
    moments = Moments.zeros(feature_classifier.FEATURES, device)
    scores = ScoreSums.zeros(1, classes, device)
    votes = torch.zeros(classes, dtype=torch.float64, device=device)
    kept = [torch.zeros(0, feature_classifier.FEATURES, device=device)]
    for images, index in batches:
        features, logits = model(images.to(device))
        moments.add(features)
        scores.add(logits, index, num)
        votes += torch.bincount(logits.argmax(1), minlength=classes).double()
        kept.append(features[index.to(device) < MAX_FEATURES].float())
    mean, cov = moments.reduced().mean_cov()
    (votes,) = all_reduce_sum(votes)
    fake = gather_rows(torch.cat(kept), kept_counts(num, MAX_FEATURES))
    out = {
        "fd_classifier": frechet_distance(mean, cov, ref.real_mean.to(device), ref.real_cov.to(device)),
        "is_classifier": scores.reduced().score()[0],
        "classes_covered": float((votes >= COVERED_SHARE * num / classes).sum()),
    }
    return {**out, **manifold_metrics(ref.real_features.to(device), fake)}


def classifier_reference(cfg: Config) -> feature_classifier.Reference:
    return main_first(
        lambda: feature_classifier.load_or_train(cfg.data.name, cfg.data.root, cfg.data.image_size, cfg.eval.cache_dir)
    )


def classifier_metrics(generator: torch.nn.Module, cfg: Config, num: int, seed: int, device: torch.device) -> dict:
    """fd_classifier, is_classifier, classes_covered and the k-NN metrics in the dataset's cached classifier's space.

    classes_covered counts the classes the classifier assigns at least a fifth of a uniform share of the samples to
    (the toys' mode-coverage convention); precision/recall/density/coverage compare the first min(num, 10,000)
    samples' features with up to 10,000 real training images' features.
    """
    ref = classifier_reference(cfg)
    batches = generated_batches(generator, cfg.model.z_dim, num, seed, device)
    return Scores(classifier_scores(ref, batches, num, device), classifier_provenance(ref, cfg, num))


def classifier_provenance(ref: feature_classifier.Reference, cfg: Config, num: int) -> dict:
    size = cfg.data.image_size
    return {
        "extractor": f"feature_classifier v{feature_classifier.VERSION} ({cfg.data.name}, {size}px, "
        f"test accuracy {ref.accuracy:.4f})",
        "extractor_sha256": ref.weights_sha256(),
        "resize": f"none (generator at {size}px; real images antialiased bilinear to {size}px)",
        "num_real": ref.real_count,
        "num_fake": num,
        "num_real_knn": int(ref.real_features.shape[0]),
        "num_fake_knn": min(num, MAX_FEATURES),
        "reference_sha256": ref.reference_sha256(),
    }


def real_baseline(cfg: Config, device: torch.device | str = "cpu") -> dict[str, float]:
    """The classifier metrics of real held-out images (the dataset spec's `held_out`, e.g. mnist5k's 1,000) against
    the training reference: the best a generator can expect at that sample count. Compare generators at --num 1000
    with it (FD is biased by n)."""
    spec = DATASETS.get(cfg.data.name)
    if spec is None or spec.held_out is None:
        raise ValueError(f"a real-vs-real baseline needs a held-out split; data.name={cfg.data.name} has none here")
    images = resize_uint8(spec.held_out()[0], cfg.data.image_size)
    lo, hi = shard_bounds(images.shape[0], *rank_world())
    parts = torch.arange(lo, hi).split(BATCH)
    batches = ((to_unit_range(images[index]).to(device), index) for index in parts)
    ref = classifier_reference(cfg)
    with torch.no_grad():
        scores = classifier_scores(ref, batches, images.shape[0], device)
    return Scores(
        scores, {**classifier_provenance(ref, cfg, images.shape[0]), "fake": f"{cfg.data.name} held-out split"}
    )


def inception_metrics(
    generator: torch.nn.Module, cfg: Config, num: int, seed: int, device: torch.device, resize: str = "legacy"
) -> dict:
    """fid, kid, kid_std, inception_score(_std), precision, recall, density, coverage; real statistics cached per
    dataset and size (the k-NN metrics on the same 10,000 features per side that KID uses)."""
    weights = inception.weights_path(cfg.eval.inception_weights)
    net = inception.load_extractor(weights, device)
    name = f"{cfg.data.name}-{cfg.data.image_size}px{'' if resize == 'legacy' else '-' + resize}.safetensors"
    cache = feature_classifier.cache_root(cfg.eval.cache_dir) / "inception" / name
    real = inception.real_statistics(net, lambda: inception.real_source(cfg), cache, device, resize)
    fake = inception.measure(net, generated_batches(generator, cfg.model.z_dim, num, seed, device), num, device, resize)
    out = {**inception.inception_metrics(real, fake, seed), **manifold_metrics(real.kept, fake.kept)}
    provenance = {
        "extractor": "inception-v3-compat (torchmetrics NoTrainInceptionV3, pool3 2048-d)",
        "extractor_sha256": cached_file_sha256(weights),
        "resize": f"{resize}: {inception.RESIZES[resize]}",
        "num_real": int(real.moments.count),
        "num_fake": num,
        "num_real_knn": int(real.kept.shape[0]),
        "num_fake_knn": int(fake.kept.shape[0]),
        "reference_sha256": cached_file_sha256(cache),
    }
    return Scores(out, provenance)


def metric_functions(cfg: Config, with_inception: bool, resize: str = "legacy") -> list[Callable[..., dict]]:
    """What evaluate() computes for cfg's dataset; checks for the Inception weights before any long computation."""
    kind = family(cfg.data.name)
    functions = {"toy": [toy_metrics], "classifier": [classifier_metrics], "inception": []}[kind]
    if kind == "inception" or (with_inception and kind != "toy"):
        inception.weights_path(cfg.eval.inception_weights)
        functions.append(functools.partial(inception_metrics, resize=resize))
    return functions


def evaluate(
    generator: torch.nn.Module,
    cfg: Config,
    accelerator: Optional[Accelerator] = None,
    num: Optional[int] = None,
    device: Optional[torch.device | str] = None,
    *,
    seed: Optional[int] = None,
    with_inception: bool = False,
    resize: str = "legacy",
) -> Scores:
    """Collective (every process calls it, or one process alone): the metrics of `generator` on num samples.

    num defaults to eval.num, device to the accelerator's, seed (of the noise; real toy points use seed + 1) to
    cfg.seed. The generator is put in eval mode and restored; no global RNG stream is consumed, so a training run's
    randomness is unchanged by evaluating. Every process returns the same dict of floats; its `provenance` attribute
    holds, per metric family (toy, classifier, inception), what the numbers were measured with.
    """
    device = torch.device(device if device is not None else accelerator.device if accelerator else "cpu")
    num, seed = num or cfg.eval.num, cfg.seed if seed is None else seed
    if resize not in inception.RESIZES:
        raise ValueError(f"resize={resize!r}: one of {', '.join(inception.RESIZES)}")
    functions, out = metric_functions(cfg, with_inception, resize), Scores()
    net = raw_module(generator)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for function in functions:
                scores = function(net, cfg, num, seed, device)
                out.update(scores)
                name = getattr(function, "func", function).__name__  # a partial: its function's name
                out.provenance[name.removesuffix("_metrics")] = scores.provenance
    finally:
        net.train(was_training)
    return out
