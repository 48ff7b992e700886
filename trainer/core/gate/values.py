"""The gate's first concern, one key at a time: fixed vocabularies, installed trackers, name lengths, and numbers
(finite, in range, sizes no run reaches). Nothing here imports a registry, so these refusals come before torch loads."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from trainer.config import (
    ARTIFACTS,
    COMPILE_BACKENDS,
    COMPILE_SCOPES,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS,
    TRACKERS,
    Config,
)
from trainer.errors import TrainerError

MAX_SEED = 2**32 - 1 - 4096  # numpy seeds are 32-bit; room for seed + process index
LIMITS = {  # upper bounds no real run reaches (memory-bound sizes are estimated at start instead)
    "train.n_critic": 1000,
    "train.steps": 10**10,
    "loss.lazy_penalty": 10_000,
    "log.num_samples": 10_000,
    "train.cpu_threads": 4096,
    "data.num_workers": 256,
    "train.timeout_s": 7 * 24 * 3600,
    "eval.num": 10**8,
}


def choice(key: str, value: Optional[str], choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise TrainerError(f"{key}={value!r} is not a valid choice. Valid choices: {', '.join(choices)}.")


def at_least(key: str, value: float, minimum: float = 1, what: str = "at least 1") -> None:
    if value < minimum:
        raise TrainerError(f"{key}={value} is impossible: it must be {what}.")


def _finite(node: Any, prefix: str = "") -> None:
    """Every float in the config is a real number: NaN or Inf would silently switch a term off or blow it up."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            _finite(value, name + ".")
        for item in value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise TrainerError(f"{name}={value} is not a finite number. Give a real value, e.g. the default.")


def values(cfg: Config) -> None:
    """One key at a time: fixed vocabularies and installed trackers, then numbers (finite, in range, sizes no run
    reaches)."""
    vocabulary(cfg)
    lengths(cfg)
    numbers(cfg)


PATH_KEYS = ("run.dir", "run.resume", "data.root", "eval.cache_dir", "eval.inception_weights", "train.deepspeed")
NAME_MAX, PATH_MAX = 255, 4096  # bytes in one path component and in a whole path (Linux's limits)
WANDB_LIMITS = {"log.project": 128, "log.group": 128, "log.job_type": 64, "log.entity": 128}  # W&B's own


def lengths(cfg: Config) -> None:
    """Names no file system or tracker takes, refused before they fail deep inside one of them."""
    node = OmegaConf.structured(cfg)
    for key in PATH_KEYS:
        value = OmegaConf.select(node, key)
        if not value:
            continue
        long = [part for part in Path(str(value)).parts if len(part.encode()) > NAME_MAX]
        if long or len(str(value).encode()) > PATH_MAX:
            what = f"its part '{long[0][:40]}...' is {len(long[0].encode())} bytes" if long else "it is too long"
            raise TrainerError(
                f"{key}: {what}; file systems take at most {NAME_MAX} bytes a name and {PATH_MAX} a path. Choose a "
                f"shorter name."
            )
    for key, most in WANDB_LIMITS.items():
        value = OmegaConf.select(node, key)
        if value is not None and len(str(value)) > most:
            raise TrainerError(f"{key} is {len(str(value))} characters; W&B takes at most {most}. Shorten it.")
    for tag in cfg.log.tags:
        if len(str(tag)) > 64:
            raise TrainerError(f"log.tags: the tag '{str(tag)[:40]}...' is {len(str(tag))} characters; W&B takes 64.")


def vocabulary(cfg: Config) -> None:
    if cfg.optim.name is not None:
        choice("optim.name", cfg.optim.name, OPTIMIZERS)
    if cfg.train.precision is not None:
        choice("train.precision", cfg.train.precision, PRECISIONS)
    choice("log.tracker", cfg.log.tracker, TRACKERS)
    choice("log.artifacts", cfg.log.artifacts, ARTIFACTS)
    choice("log.progress", cfg.log.progress, PROGRESS)
    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(cfg.log.tracker)
    if package and importlib.util.find_spec(package) is None:
        raise TrainerError(
            f"log.tracker={cfg.log.tracker} needs the '{package}' package, which is not installed. Install it "
            f"(pip install {package}) or use log.tracker=none (metrics.jsonl is always written)."
        )
    choice("speed.compile_backend", cfg.speed.compile_backend, COMPILE_BACKENDS)
    choice("speed.compile_scope", cfg.speed.compile_scope, COMPILE_SCOPES)


def numbers(cfg: Config) -> None:
    node = OmegaConf.structured(cfg)  # dotted-key lookups below
    _finite(node)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise TrainerError(f"seed={cfg.seed} is impossible: it must be in [0, {MAX_SEED}] (process i uses seed + i).")
    for key, most in LIMITS.items():
        if OmegaConf.select(node, key) > most:
            raise TrainerError(
                f"{key}={OmegaConf.select(node, key)} is beyond any sensible run: it may be at most {most:,}. "
                f"Check the value (a missing decimal point or extra zeros?)."
            )
    at_least("loss.gp_weight", cfg.loss.gp_weight, 0, "0 or more (10 in the paper)")
    at_least("loss.drift", cfg.loss.drift, 0, "0 or more (0.001 in ProGAN)")
    if not cfg.loss.clip > 0:
        raise TrainerError(f"loss.clip={cfg.loss.clip} is impossible: it must be greater than 0 (0.01 in WGAN).")
    for key in ("train.steps", "train.batch_size", "train.n_critic", "log.every", "log.num_samples", "model.z_dim"):
        at_least(key, OmegaConf.select(node, key))
    zero_or_more = ("log.sample_every", "checkpoint.every", "checkpoint.keep", "model.width", "train.cpu_threads")
    for key in (*zero_or_more, "train.max_nonfinite"):
        at_least(key, OmegaConf.select(node, key), 0, "0 or more")
    schedule_steps = cfg.train.schedule_steps
    if schedule_steps is not None:
        at_least("train.schedule_steps", schedule_steps, 1, "at least 1 (None = train.steps)")
        if schedule_steps > LIMITS["train.steps"]:
            raise TrainerError(f"train.schedule_steps={schedule_steps:,} is beyond any sensible run: at most 10**10.")
        if cfg.optim.schedule == "linear" and cfg.train.steps > schedule_steps:
            raise TrainerError(
                f"train.steps={cfg.train.steps} runs past train.schedule_steps={schedule_steps}, where the linear "
                f"schedule has taken both learning rates to 0: the steps after it would train nothing. Raise "
                f"train.schedule_steps to at least train.steps, or lower train.steps."
            )
    at_least("train.timeout_s", cfg.train.timeout_s, 1, "at least 1 (seconds; 600 by default)")
    if not 0 <= cfg.train.ema_decay < 1:
        raise TrainerError(f"train.ema_decay={cfg.train.ema_decay} is impossible: it must be in [0, 1) (0 = off).")
    for key in ("optim.lr_d", "optim.lr_g"):
        value = OmegaConf.select(node, key)
        if value is not None and not 0 < value <= 1:
            raise TrainerError(
                f"{key}={value} is impossible: a learning rate must be in (0, 1] (Adam 1e-4 in the paper); larger "
                f"rates blow the weights up to Inf within a few steps."
            )
    betas = cfg.optim.betas
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise TrainerError(f"optim.betas={cfg.optim.betas} is impossible: two numbers in [0, 1), e.g. [0.0, 0.9].")
    at_least("eval.every", cfg.eval.every, 0, "0 or more (0 = no evaluation during training)")
    for key in ("data.crop_size", "data.num_workers", "train.batch_size_g", "loss.acgan_scale", "loss.acgan_scale_g"):
        at_least(key, OmegaConf.select(node, key), 0, "0 or more")
    penalty = cfg.loss
    if not 0 < penalty.penalty_fraction <= 1:
        raise TrainerError(
            f"loss.penalty_fraction={penalty.penalty_fraction} is impossible: it must be in (0, 1] (1 = the whole "
            f"batch)."
        )
    at_least("loss.lazy_penalty", penalty.lazy_penalty, 1, "at least 1 (1 = the penalty on every critic step)")
    at_least("eval.num", cfg.eval.num, 2, "at least 2 (a covariance needs two samples)")
