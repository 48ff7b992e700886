"""Sample-quality metrics of a generator: toys (W1, modes), digits (classifier FD), images (Inception FID/KID/IS)."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from accelerate import Accelerator

from trainer.accel.runtime import raw_module
from trainer.config import Config
from trainer.data.toys import TOYS
from trainer.metrics import feature_classifier, inception
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
from trainer.metrics.toy import MODES, W1_POINTS, high_quality_counts, mode_summary, w1_exact

BATCH = 500  # samples per generator forward pass


def family(dataset: str) -> str:
    """toy, classifier or inception: which metrics fit `dataset`.

    The 2-D toys get the exact W1 to real points, modes covered and the high-quality fraction (trainer.metrics.toy);
    digits, MNIST and Fashion-MNIST a Frechet distance and an Inception score in the feature space of a small
    classifier trained on the real data (trainer.metrics.feature_classifier); other image sets FID, KID and the
    Inception score (trainer.metrics.inception), which evaluate(with_inception=True) / --inception adds for any.
    """
    if dataset in TOYS:
        return "toy"
    return "classifier" if dataset in feature_classifier.DATASETS else "inception"


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
    return out


def classifier_metrics(generator: torch.nn.Module, cfg: Config, num: int, seed: int, device: torch.device) -> dict:
    """fd_classifier and is_classifier in the feature space of the dataset's cached classifier."""
    ref = main_first(
        lambda: feature_classifier.load_or_train(cfg.data.name, cfg.data.root, cfg.data.image_size, cfg.eval.cache_dir)
    )
    model = ref.model.to(device)
    moments = Moments.zeros(feature_classifier.FEATURES, device)
    scores = ScoreSums.zeros(1, feature_classifier.CLASSES, device)
    for images, index in generated_batches(generator, cfg.model.z_dim, num, seed, device):
        features, logits = model(images)
        moments.add(features)
        scores.add(logits, index, num)
    mean, cov = moments.reduced().mean_cov()
    fd = frechet_distance(mean, cov, ref.real_mean.to(device), ref.real_cov.to(device))
    return {"fd_classifier": fd, "is_classifier": scores.reduced().score()[0]}


def inception_metrics(generator: torch.nn.Module, cfg: Config, num: int, seed: int, device: torch.device) -> dict:
    """fid, kid, kid_std, inception_score, inception_score_std; real statistics cached per dataset and size."""
    net = inception.load_extractor(inception.weights_path(cfg.eval.inception_weights), device)
    name = f"{cfg.data.name}-{cfg.data.image_size}px.safetensors"
    cache = feature_classifier.cache_root(cfg.eval.cache_dir) / "inception" / name
    real = inception.real_statistics(net, lambda: inception.real_source(cfg), cache, device)
    fake = inception.measure(net, generated_batches(generator, cfg.model.z_dim, num, seed, device), num, device)
    return inception.inception_metrics(real, fake, seed)


def metric_functions(cfg: Config, with_inception: bool) -> list[Callable[..., dict]]:
    """What evaluate() computes for cfg's dataset; checks for the Inception weights before any long computation."""
    kind = family(cfg.data.name)
    functions = {"toy": [toy_metrics], "classifier": [classifier_metrics], "inception": []}[kind]
    if kind == "inception" or (with_inception and kind != "toy"):
        inception.weights_path(cfg.eval.inception_weights)
        functions.append(inception_metrics)
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
) -> dict[str, float]:
    """Collective (every process calls it, or one process alone): the metrics of `generator` on num samples.

    num defaults to eval.num, device to the accelerator's, seed (of the noise; real toy points use seed + 1) to
    cfg.seed. The generator is put in eval mode and restored; no global RNG stream is consumed, so a training run's
    randomness is unchanged by evaluating. Every process returns the same dict.
    """
    device = torch.device(device if device is not None else accelerator.device if accelerator else "cpu")
    num, seed = num or cfg.eval.num, cfg.seed if seed is None else seed
    functions, out = metric_functions(cfg, with_inception), {}
    net = raw_module(generator)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for function in functions:
                out.update(function(net, cfg, num, seed, device))
    finally:
        net.train(was_training)
    return out
