"""The gate: every refusal of a configuration, one function per concern, run before anything is built.

trainer.config parses (unknown keys, wrong types) and knows no registry; everything a parsed config can still get
wrong, one key's value or a combination of keys, is refused here, with the way out, in this order: values, names,
losses, data, compile, CUDA graph, DeepSpeed. What stays for run time is facts about the environment only:
`environment` (the device's precision and memory, once the Accelerator exists), the launcher's variables
(trainer.accel.launcher.launcher_flags, applied by `configure(launch=True)` before the gate), the NCCL version and the
process group's settings (trainer.accel.cuda_graph.check_runtime).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
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
    load_config,
)
from trainer.errors import TrainerError

# The registries (networks, datasets, losses) import torch, which takes seconds: they are imported by the concerns
# that need them, after `values`, so that a typo'd key, a wrong type or an impossible value is refused at once.

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


def configure(config_file: Optional[str] = None, overrides: tuple[str, ...] = (), launch: bool = False) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides (trainer.config), then the gate. Raises TrainerError.

    `launch`: train.py's own start, where the launcher's flags (`accelerate launch --dynamo_backend ...`) become
    config keys first, so that the gate judges what will really run."""
    cfg = load_config(config_file, overrides)
    if launch:
        from trainer.accel.launcher import environment_variables, launcher_flags

        environment_variables(cfg)
        launcher_flags(cfg)
    try:
        refuse(cfg)
    except TrainerError as err:
        raise TrainerError(redacted(str(err), cfg)) from None
    return cfg


def redacted(message: str, cfg: Config) -> str:
    """`message` with every value that came from an interpolation (`${oc.env:TOKEN}`) shown as its `${...}` text:
    a refusal quotes the value it refuses, and a value read from the environment may be a secret."""
    node = OmegaConf.structured(cfg)
    for key, text in getattr(cfg, "_raw", {}).items():
        value = OmegaConf.select(node, key)
        values = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        for item in values:
            if isinstance(item, str) and len(item) >= 4:  # short values (a digit, 'no') would also hit other words
                message = message.replace(repr(item), repr(text)).replace(item, text)
    return message


def refuse(cfg: Config) -> None:
    """Every concern in turn; the first refusal raises (the user's most basic mistake first)."""
    for concern in (values, names, losses, data, compile_options, cuda_graph, deepspeed):
        concern(cfg)


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


def names(cfg: Config) -> None:
    """The names the registries hold: presets, datasets, losses, crops, schedules."""
    from trainer.core.losses import LOSSES
    from trainer.core.schedule import SCHEDULES
    from trainer.data.files import CROPS
    from trainer.data.registry import DATASETS
    from trainer.nets.models import PRESETS

    choice("model.name", cfg.model.name, sorted(PRESETS))
    choice("data.name", cfg.data.name, sorted(DATASETS))
    choice("loss.name", cfg.loss.name, list(LOSSES))  # in the registry's order: the paper's first
    choice("data.crop", cfg.data.crop, CROPS)
    choice("optim.schedule", cfg.optim.schedule, SCHEDULES)


def relativistic(cfg: Config) -> bool:
    from trainer.core.losses import LOSSES

    return LOSSES[cfg.loss.name].relativistic


def optimizer(cfg: Config) -> str:
    """The optimizer the run uses: optim.name, else the loss's paper default."""
    from trainer.core.losses import LOSSES

    return cfg.optim.name or LOSSES[cfg.loss.name].optimizer


def losses(cfg: Config) -> None:
    """What the loss's optimizer, penalty and pairing allow."""
    from trainer.core.losses import LOSSES

    spec, loss = LOSSES[cfg.loss.name], cfg.loss
    for key, value in (("loss.gamma", loss.gamma), ("loss.gamma_final", loss.gamma_final)):
        if value is not None and not spec.zero_centred:
            zero_centred = ", ".join(n for n, s in LOSSES.items() if s.zero_centred)
            raise TrainerError(
                f"{key}={value} sets the zero-centred penalties' gamma, but loss.name={cfg.loss.name} has none "
                f"({zero_centred} do). Drop {key}, or use loss.gp_weight for the WGAN-GP penalty's lambda."
            )
        if value is not None and value < 0:
            raise TrainerError(f"{key}={value} is impossible: it must be 0 or more (R3GAN uses 0.05 on CIFAR-10).")
    if spec.relativistic and cfg.train.batch_size_g not in (0, cfg.train.batch_size):
        raise TrainerError(
            f"loss.name={cfg.loss.name} pairs every fake with a real sample, so the generator's batch is the critic's: "
            f"train.batch_size_g={cfg.train.batch_size_g} differs from train.batch_size={cfg.train.batch_size}. "
            f"Set train.batch_size_g=0."
        )
    if spec.relativistic and cfg.model.conditional:
        raise TrainerError(
            f"loss.name={cfg.loss.name} with model.conditional=true is not supported yet (the paired real batch's "
            f"labels and the AC-GAN head are not combined). Drop model.conditional, or use loss.name=gan-r1."
        )
    if loss.gamma_final is not None and cfg.speed.compile and cfg.speed.compile_scope == "loss":
        raise TrainerError(
            "loss.gamma_final changes gamma every step, which a compiled loss holds as a constant (it would recompile "
            "every step). Drop speed.compile, use speed.compile_scope=modules, or keep gamma constant."
        )
    if cfg.speed.fused_adam is True and optimizer(cfg) != "adam":
        raise TrainerError(
            f"speed.fused_adam=true selects Adam's kernel, but the optimizer is {optimizer(cfg)}. "
            f"Set optim.name=adam or speed.fused_adam=false."
        )


def data(cfg: Config) -> None:
    """DiffAugment's policy, class labels for a conditional run, and a network that makes the data's shape."""
    from trainer.core.augment import POLICIES, parse_policy
    from trainer.data.registry import DATASETS
    from trainer.nets.models import PRESETS

    for name in parse_policy(cfg.data.augment):
        if name not in POLICIES:
            raise TrainerError(
                f"data.augment={cfg.data.augment!r}: '{name}' is not a DiffAugment policy. Use a comma-separated "
                f"subset of {', '.join(POLICIES)}, e.g. data.augment=color,translation,cutout, or leave it empty."
            )
    augmented, dataset, preset = parse_policy(cfg.data.augment), DATASETS[cfg.data.name], PRESETS[cfg.model.name]
    if augmented and cfg.speed.cuda_graph:  # its random draws inside a capture: not verified
        raise TrainerError(
            f"data.augment={cfg.data.augment} cannot run with speed.cuda_graph=true yet (random augmentations inside a "
            f"captured graph are not verified). Drop speed.cuda_graph, or data.augment."
        )
    if augmented and dataset.is_toy:
        raise TrainerError(
            f"data.augment={cfg.data.augment} augments images, but data.name={cfg.data.name} is 2-D toy data. "
            f"Drop data.augment."
        )
    if cfg.model.conditional and not preset.conditional:
        fits = ", ".join(sorted(n for n, p in PRESETS.items() if p.conditional))
        raise TrainerError(f"model.conditional=true: model.name={cfg.model.name} has no conditional form. Use: {fits}.")
    if cfg.model.conditional and not dataset.num_classes:
        labelled = ", ".join(sorted(n for n, d in DATASETS.items() if d.num_classes))
        raise TrainerError(
            f"model.conditional=true needs class labels, but data.name={cfg.data.name} has none. Labelled: {labelled}."
        )
    if dataset.is_toy != preset.is_toy:
        kind, other = ("2-D toy", "image") if dataset.is_toy else ("image", "2-D toy")
        fits = sorted(n for n, p in PRESETS.items() if p.is_toy == dataset.is_toy)
        raise TrainerError(
            f"model.name={cfg.model.name} is a {other} model but data.name={cfg.data.name} is {kind} data. "
            f"Models that fit: {', '.join(fits)}."
        )
    if not dataset.is_toy and cfg.data.image_size not in preset.image_sizes:
        sizes = ", ".join(map(str, preset.image_sizes))
        raise TrainerError(
            f"data.image_size={cfg.data.image_size} cannot be produced by model.name={cfg.model.name}. "
            f"Sizes this preset makes: {sizes}."
        )


def compile_options(cfg: Config) -> None:
    """speed.compile's scope under DeepSpeed."""
    from trainer.accel import zero

    if cfg.speed.compile and cfg.speed.compile_scope == "loss" and zero.requested(cfg) is not None:
        raise TrainerError(
            "speed.compile=true compiles each whole loss, which under DeepSpeed traces into the engines' forward: "
            "their step counters change every step and recompile it until torch.compile gives up. Under DeepSpeed use "
            "speed.compile_scope=modules (G and the critic's calls compiled, the penalty eager), or train with DDP."
        )


def cuda_graph(cfg: Config) -> None:
    """speed.cuda_graph's requirements (trainer.accel.cuda_graph), refused with the way out before any GPU work."""
    s, t = cfg.speed, cfg.train
    if not s.cuda_graph:
        return
    if s.compile and s.compile_backend == "cudagraphs" and getattr(cfg, "_launcher_backend", False):
        raise TrainerError(
            "--dynamo_backend cudagraphs cannot run with speed.cuda_graph=true (its own CUDA graphs cannot be captured "
            "inside this one). Use --dynamo_backend inductor, or drop speed.cuda_graph."
        )
    conflicts = [
        (t.precision == "fp16", "train.precision=fp16 (the GradScaler reads its overflow verdict on the host)", "bf16"),
        (s.fused_adam is False, "speed.fused_adam=false (the graph needs Adam's fused kernel)", "drop that override"),
        (cfg.loss.lazy_penalty > 1, "loss.lazy_penalty>1 (a graph replays one fixed step)", "loss.lazy_penalty=1"),
        (
            s.compile and s.compile_backend == "cudagraphs",
            "speed.compile_backend=cudagraphs (its own CUDA graphs cannot be captured inside this one)",
            "speed.compile_backend=inductor",
        ),
        (t.deepspeed is not None, "train.deepspeed (DeepSpeed's engines are not captured)", "DDP or one GPU"),
        (
            relativistic(cfg),
            f"loss.name={cfg.loss.name} (its generator step's paired real batch is not among the graph's inputs)",
            "loss.name=gan-r1",
        ),
        (
            optimizer(cfg) != "adam",
            f"optim.name={optimizer(cfg)} (the graph needs Adam's fused kernel)",
            "optim.name=adam",
        ),
    ]
    for bad, what, fix in conflicts:
        if bad:
            raise TrainerError(f"speed.cuda_graph=true cannot run with {what}. Use {fix}, or drop speed.cuda_graph.")


def deepspeed(cfg: Config) -> None:
    """What the network pair cannot do under ZeRO (train.deepspeed, or `accelerate launch --use_deepspeed`)."""
    from trainer.accel import zero
    from trainer.core.losses import LOSSES

    source = zero.requested(cfg)
    if source is None:
        return
    deepspeed_file(source, given=cfg.train.deepspeed is not None)
    if LOSSES[cfg.loss.name].clip:
        raise TrainerError(
            f"loss.name={cfg.loss.name} is not supported under DeepSpeed: ZeRO keeps its own float32 copy of the "
            "weights, so clipping the module's weights would be undone by the next step. Train it without DeepSpeed."
        )
    if cfg.speed.channels_last:
        raise TrainerError(
            "speed.channels_last=true cannot run under DeepSpeed: ZeRO flattens the weights, which needs them in the "
            "plain (NCHW) layout. Drop speed.channels_last, or train with DDP."
        )
    if (cfg.train.precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")) == "fp16":
        raise TrainerError(
            "train.precision=fp16 is not supported under DeepSpeed (its loss scaler needs DeepSpeed's fp16 mode, which "
            "casts the weights); use train.precision=bf16 or no."
        )


def deepspeed_file(source: str, given: bool) -> None:
    """A ZeRO stage or a DeepSpeed JSON file the trainer can run: stage 1-2 (`given` as train.deepspeed; the launcher's
    --zero_stage may also say 0), no optimizer, scheduler or fp16/bf16 in the file."""
    if source.strip().isdigit() and (source in ("1", "2") or not given):
        config: dict = {"zero_optimization": {"stage": int(source)}}
    elif Path(source).is_file():
        try:
            config = json.loads(Path(source).read_text())
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise TrainerError(
                f"the DeepSpeed config {source} is not a JSON object ({' '.join(str(err).split())[:200]}). Fix the "
                f"file, or give a ZeRO stage instead: train.deepspeed=2."
            ) from None
        if not isinstance(config, dict):
            raise TrainerError(f"the DeepSpeed config {source} holds a {type(config).__name__}, not a JSON object.")
    else:
        raise TrainerError(f"train.deepspeed={source!r} is neither a ZeRO stage (1 or 2) nor a DeepSpeed JSON file.")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise TrainerError(
            f"DeepSpeed ZeRO stage {stage} is not supported: ZeRO-3 partitions the weights themselves, while the "
            f"penalty and the generator step read the critic's full module. Use stage 1 or 2."
        )
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise TrainerError(
                f"the DeepSpeed config sets '{key}': remove it; the trainer builds its own from optim.*."
            )
    for key in ("fp16", "bf16"):
        if str(config.get(key, {}).get("enabled", False)).lower() == "true":
            raise TrainerError(
                f"the DeepSpeed config enables '{key}', which casts the weights and leaves no float32 critic for the "
                f"gradient penalty. Remove it and set train.precision=bf16 (or use a launch/zero*-bf16.yaml): the "
                f"engines then keep float32 weights and run the forward under autocast."
            )


def environment(cfg: Config, accelerator) -> None:
    """Facts of the machine, once the Accelerator exists and before any data or model: a precision the device cannot
    run, and sizes that cannot fit in its memory."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise TrainerError(
            "train.precision=fp16 needs a CUDA GPU, but this run is on the CPU, where it would silently train in "
            "float32. Use train.precision=bf16 (CPU autocast) or train.precision=no."
        )
    try:
        need = memory_estimate(cfg)
    except (RuntimeError, OverflowError, ValueError) as err:  # sizes past what PyTorch's shape arithmetic holds
        raise TrainerError(
            f"this config is beyond any machine: model.name={cfg.model.name} with model.z_dim={cfg.model.z_dim}, "
            f"model.width={cfg.model.width} and data.image_size={cfg.data.image_size} overflows PyTorch's size "
            f"arithmetic ({' '.join(str(err).split())[:160]}). Lower model.z_dim, model.width or train.batch_size."
        ) from None
    have = _memory_available(accelerator)
    if have and need > have:
        raise TrainerError(
            f"this config needs about {need / 2**30:,.1f} GiB on {accelerator.device.type} (weights, gradients, Adam "
            f"moments and EMA of model.name={cfg.model.name} with model.z_dim={cfg.model.z_dim}, model.width="
            f"{cfg.model.width}, plus a batch of train.batch_size={cfg.train.batch_size}), but {have / 2**30:,.1f} GiB "
            f"exist there. Lower model.z_dim, model.width or train.batch_size."
        )


def memory_estimate(cfg: Config) -> int:
    """Bytes a run holds at least: 4 float32 copies of every parameter (weights, grads, two Adam moments), the EMA
    generator, and a critic batch of real, fake and interpolated samples. Built on the meta device: no memory."""
    import torch

    from trainer.data.registry import DATASETS
    from trainer.nets.models import build_models

    spec = DATASETS[cfg.data.name]
    # the registry's class count; an image folder's is known only once it is read (10 stands in for it here)
    classes = (spec.num_classes if spec.num_classes > 0 else 10) if cfg.model.conditional else 0
    with torch.device("meta"):
        generator, critic = build_models(
            cfg.model.name, cfg.model.z_dim, cfg.model.width, spec.channels, cfg.data.image_size, num_classes=classes
        )
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (generator, critic))
    sample = 2 if spec.is_toy else spec.channels * cfg.data.image_size**2
    batch = max(cfg.train.batch_size, cfg.train.batch_size_g) * (3 * sample + cfg.model.z_dim)
    return 4 * (4 * (n_g + n_d) + n_g + batch)


def _memory_available(accelerator) -> int:
    """Total memory of the run's device in bytes (0 if unknown)."""
    import torch

    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_properties(accelerator.device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
