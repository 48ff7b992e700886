"""FID, KID and Inception score on Inception-v3 features: torchmetrics' FID network with torch-fidelity's weights."""

from __future__ import annotations

import functools
import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trainer.config import Config
from trainer.data.batches import to_unit_range
from trainer.data.registry import DATASETS, load_images
from trainer.errors import TrainerError
from trainer.metrics.moments import (
    Moments,
    ScoreSums,
    all_reduce_sum,
    frechet_distance,
    gather_rows,
    rank_world,
    shard_bounds,
)

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
POOL, CLASSES = 2048, 1008  # pool3 features; logits of the 2015 TF Inception (1008 classes, unbiased as in IS)
IS_SPLITS = 10  # the Inception score's usual 10 splits (mean and std over them)
KID_SUBSETS, KID_SUBSET_SIZE, KID_FEATURES = 100, 1000, 10_000  # KID: subsets, their size, features kept per side
REAL_MAX = 50_000  # real images in the reference statistics (the usual 50k; a fixed random subset of larger sets)


def default_weights_path() -> Path:
    """Where torch-fidelity's own download would put the weights: the torch hub cache's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def weights_path(configured: Optional[str]) -> Path:
    """The weights file to use, read once as tensors (before any long computation); raises TrainerError with the
    fix when it is missing or holds anything but tensors (never downloads)."""
    path = Path(configured).expanduser() if configured else default_weights_path()
    if path.is_file():
        stat = path.stat()
        _vetted(str(path), stat.st_mtime_ns, stat.st_size)
        return path
    where = f"eval.inception_weights={configured}" if configured else f"the torch hub cache, {path}"
    raise TrainerError(
        f"FID/KID/IS need the Inception-v3 weights {WEIGHTS_FILE}, and they are not at {where}. This machine does "
        f"not download them: run `python -m trainer.fetch_weights` on a machine with internet (e.g. a login node; "
        f"it saves them to its torch hub cache, {default_weights_path()} for this user here) and copy the file "
        f"to {default_weights_path()} here, or set eval.inception_weights=/path/to/{WEIGHTS_FILE} "
        f"(python -m trainer.evaluate: --inception-weights PATH)."
    )


def read_weights(path: Path) -> dict[str, Tensor]:
    """The weights file as a state dict of tensors, unpickled with weights_only=True: a file that holds any other
    object (whose unpickling could run code: torch-fidelity's own loader would, with weights_only=False) is refused."""
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol note would only precede the refusal below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only's refusal of a global it does not allow
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"a pickled {found.group(1)}" if found else "pickled data that is not tensors"
        raise TrainerError(
            f"the Inception weights {path} were refused: the file holds {what}, and unpickling it could run code "
            f"from the file, so only tensors are read. Replace it with torch-fidelity's published {WEIGHTS_FILE} "
            f"(`python -m trainer.fetch_weights --force` on a machine with internet), or point eval.inception_weights "
            f"(python -m trainer.evaluate: --inception-weights) at a file that holds only the weights."
        ) from None
    except Exception as err:  # noqa: BLE001 - a cut or foreign file means the same thing to the user
        raise _unloadable(path, err) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise TrainerError(
            f"the Inception weights {path} hold a {type(state).__name__}, not a state dict of tensors; fetch "
            f"torch-fidelity's {WEIGHTS_FILE} with `python -m trainer.fetch_weights` on a machine with internet."
        )
    return state


def _unloadable(path: Path, err: Exception) -> TrainerError:
    return TrainerError(
        f"the Inception weights {path} could not be loaded ({type(err).__name__}: {str(err)[:200]}). Fetch them "
        f"again with `python -m trainer.fetch_weights` on a machine with internet."
    )


@functools.lru_cache(maxsize=4)
def _vetted(path: str, mtime_ns: int, size: int) -> None:
    read_weights(Path(path))  # mtime and size only key the cache: a replaced file is read again


@functools.lru_cache(maxsize=1)  # evaluations every eval.every steps reuse the network
def load_extractor(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """torchmetrics' FID Inception-v3 (eval mode, frozen) returning (pool features, unbiased logits)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    class InceptionFeatures(NoTrainInceptionV3):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            pool, logits = self._torch_fidelity_forward(x)  # the FID network's forward, both outputs of one pass
            return pool, logits

    # torch-fidelity unpickles the path it is given with weights_only=False: it gets the tensors read_weights read
    # safely, saved again into memory, so what it unpickles is only what torch.save wrote of them.
    buffer = io.BytesIO()
    torch.save(read_weights(path), buffer)
    buffer.seek(0)
    try:
        net = InceptionFeatures("inception-v3-compat", ["2048", "logits_unbiased"], buffer)  # type: ignore[arg-type]
    except Exception as err:  # noqa: BLE001 - tensors of the wrong names or shapes mean the same thing to the user
        raise _unloadable(path, err) from None
    return net.to(device)


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Images in [-1, 1] (N, C, H, W), C in {1, 3}, as the uint8 RGB the network expects (it resizes to 299)."""
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


RESIZES = {  # how images reach 299x299: the provenance text of each choice
    "legacy": "torch-fidelity's bilinear to 299x299 inside the network, no antialiasing (the usual FID numbers)",
    "clean": "antialiased bicubic to 299x299 on uint8 before the network (clean-fid's point; not comparable)",
}


def clean_resize(pixels: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, 299, 299) with an antialiased bicubic filter (Parmar et al. 2022's clean
    resize: downsampling without aliasing), rounded back to uint8 as a saved image would be."""
    if tuple(pixels.shape[-2:]) == (299, 299):
        return pixels
    x = torch.nn.functional.interpolate(pixels.float(), size=(299, 299), mode="bicubic", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


@dataclass
class InceptionStats:
    """One image set's statistics, already summed over processes."""

    moments: Moments  # pool features, for FID
    scores: ScoreSums  # class probabilities, for the Inception score
    kept: Tensor  # pool features of the first KID_FEATURES samples, for KID

    def to_tensors(self) -> dict[str, Tensor]:
        m, s = self.moments, self.scores
        tensors = {"total": m.total, "outer": m.outer, "count": m.count, "plogp": s.plogp, "p": s.p}
        return {k: v.cpu().contiguous() for k, v in {**tensors, "s_count": s.count, "kept": self.kept}.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], device: torch.device | str) -> InceptionStats:
        t = {k: v.to(device) for k, v in t.items()}
        moments = Moments(t["total"], t["outer"], t["count"])
        return cls(moments, ScoreSums(t["plogp"], t["p"], t["s_count"]), t["kept"])


@torch.no_grad()
def measure(
    net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num: int, device: torch.device, resize: str = "legacy"
) -> InceptionStats:
    """Collective: statistics of this process's (images in [-1, 1], global indices of num) batches, over processes.

    FID needs only the summed feature moments and the Inception score per-split sums of p log p and p, both
    all-reduced; KID needs features themselves, so the first KID_FEATURES samples' features are gathered (not images).
    """
    moments, scores = Moments.zeros(POOL, device), ScoreSums.zeros(IS_SPLITS, CLASSES, device)
    kept = [torch.zeros(0, POOL, device=device)]
    for images, index in batches:
        pixels = to_uint8_rgb(images.to(device))
        pool, logits = net(clean_resize(pixels) if resize == "clean" else pixels)
        moments.add(pool)
        scores.add(logits, index, num)
        kept.append(pool[index.to(device) < KID_FEATURES].float())
    world = rank_world()[1]
    bounds = [shard_bounds(num, r, world) for r in range(world)]
    counts = [max(0, min(hi, KID_FEATURES) - lo) for lo, hi in bounds]
    return InceptionStats(moments.reduced(), scores.reduced(), gather_rows(torch.cat(kept), counts))


def real_source(cfg: Config) -> tuple[int, Callable[[Tensor], Tensor]]:
    """(number of real training images, indices -> their uint8 (n, C, S, S) images) for in-memory or streamed sets."""
    spec = DATASETS[cfg.data.name]
    opener = getattr(spec, "open", None)
    if opener is None:
        images = load_images(cfg.data.name, cfg.data.root, False, cfg.data.image_size)
        return images.shape[0], lambda index: images[index]
    from trainer.data.files import ImageOptions

    options = ImageOptions(cfg.data.image_size, getattr(cfg.data, "crop", "center"), getattr(cfg.data, "crop_size", 0))
    dataset = opener(cfg.data.root, False, options)
    return len(dataset), lambda index: torch.stack([dataset[int(i)][0] for i in index])


def real_batches(
    chosen: Tensor, fetch: Callable[[Tensor], Tensor], batch: int = 200
) -> Iterator[tuple[Tensor, Tensor]]:
    """This process's share of the chosen real images, in [-1, 1], with their positions in `chosen`."""
    lo, hi = shard_bounds(chosen.numel(), *rank_world())
    for start in range(lo, hi, batch):
        position = torch.arange(start, min(start + batch, hi))
        yield to_unit_range(fetch(chosen[position])), position


def real_statistics(
    net: nn.Module,
    source: Callable[[], tuple[int, Callable[[Tensor], Tensor]]],
    cache: Path,
    device: torch.device,
    resize: str = "legacy",
) -> InceptionStats:
    """Collective: statistics of up to REAL_MAX real images (a fixed random subset of larger sets), cached by rank 0."""
    (have,) = all_reduce_sum(torch.tensor(float(cache.is_file()), device=device))
    if int(have) == rank_world()[1]:
        return InceptionStats.from_tensors(load_file(str(cache)), device)
    count, fetch = source()
    chosen = torch.arange(count)
    if count > REAL_MAX:
        chosen = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:REAL_MAX].sort().values
    stats = measure(net, real_batches(chosen, fetch), chosen.numel(), device, resize)
    if rank_world()[0] == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        save_file(stats.to_tensors(), str(tmp))
        tmp.replace(cache)
    return stats


def kernel_inception_distance(real: Tensor, fake: Tensor, seed: int = 0) -> tuple[float, float]:
    """Mean and std over KID_SUBSETS random subsets of the unbiased polynomial-kernel MMD^2 (torchmetrics' poly_mmd)."""
    from torchmetrics.image.kid import poly_mmd

    size = min(KID_SUBSET_SIZE, real.shape[0], fake.shape[0])
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(KID_SUBSETS):
        r = real[torch.randperm(real.shape[0], generator=rng)[:size].to(real.device)].double()
        f = fake[torch.randperm(fake.shape[0], generator=rng)[:size].to(fake.device)].double()
        values.append(poly_mmd(r, f))
    stacked = torch.stack(values)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


def inception_metrics(real: InceptionStats, fake: InceptionStats, seed: int = 0) -> dict[str, float]:
    kid, kid_std = kernel_inception_distance(real.kept, fake.kept, seed)
    score, score_std = fake.scores.score()
    return {
        "fid": frechet_distance(*fake.moments.mean_cov(), *real.moments.mean_cov()),
        "kid": kid,
        "kid_std": kid_std,
        "inception_score": score,
        "inception_score_std": score_std,
    }
