"""Typed experiment config: dataclass schema, YAML files, dotted overrides; parsing only (the gate judges values:
trainer.core.gate)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    InterpolationValidationError,
    OmegaConfBaseException,
    UnsupportedInterpolationType,
)

from trainer.errors import TrainerError

OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("none", "wandb", "tensorboard")
ARTIFACTS = ("none", "generator", "checkpoint")
PROGRESS = ("auto", "bar", "lines")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
COMPILE_SCOPES = ("loss", "modules")  # trainer.core.compiled; trainer.accel.speed.compile_pair


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run folder: config, metrics.jsonl, samples/, checkpoints/
    resume: Optional[str] = None  # None: fresh run (refuses a folder with checkpoints); "latest" or a checkpoint path


@dataclass
class ModelConfig:
    name: str = "conv-small"  # preset in trainer.nets.models.PRESETS
    z_dim: int = 64  # latent size
    width: int = 32  # base channel/hidden width; 0 = the preset's own (mlp 128, dcgan28 64, conv-small 64, toy 512)
    conditional: bool = False  # class-conditional G(z, y) + AC-GAN critic head (labelled data); False = unconditional


@dataclass
class DataConfig:
    name: str = "digits"  # dataset in trainer.data.registry.DATASETS
    root: str = "data"  # folder holding downloadable datasets (torchvision layout)
    image_size: int = 8  # images are resized to this side (pixels; digits are 8x8 natively); ignored for 2-D toys
    download: bool = False  # allow torchvision to download missing data (main process first)
    crop: str = "center"  # file datasets: center (centred square, then resize) | none (stretch the whole image)
    crop_size: int = 0  # side of the centred square in source pixels before resizing; 0 = the shorter side
    flip: bool = False  # random horizontal flips (a fixed coin per seed, epoch and image); False = none
    num_workers: int = 4  # DataLoader worker processes per process for streamed datasets; 0 = load in the main one
    augment: str = ""  # DiffAugment policy before the critic, e.g. color,translation,cutout (real and fake); "" = none


@dataclass
class LossConfig:
    name: str = "wgan-gp"  # one of trainer.core.losses.LOSSES
    gp_weight: float = 10.0  # lambda of the gradient penalty (wgan-gp, wgan-lp); 0 = no penalty
    drift: float = 0.0  # epsilon of the drift term eps * E[D(real)^2]; 0 = off
    clip: float = 0.01  # weight-clipping bound c for wgan-clip (weights kept in [-c, c])
    acgan_scale: float = 1.0  # weight of the critic's AC-GAN cross-entropy on real labels (conditional); 0 = off
    acgan_scale_g: float = 0.1  # weight of the generator's AC-GAN cross-entropy on its labels (conditional); 0 = off
    penalty_fraction: float = 1.0  # share of the critic batch the penalty uses (changes the math); 1 = all (the paper)
    lazy_penalty: int = 1  # penalty every k-th critic step, weight lambda * k (changes the math); 1 = always (paper)
    gamma: Optional[float] = None  # zero-centred R1/R2's gamma (gan-r1, r3gan): gamma/2 E||grad||^2; None = paper's
    gamma_final: Optional[float] = None  # gamma at train.schedule_steps, by a cosine decay (R3GAN); None = constant


@dataclass
class OptimConfig:
    name: Optional[str] = None  # adam | rmsprop | sgd; None = the loss's paper default (see trainer.core.losses)
    lr_d: Optional[float] = None  # critic learning rate; None = the loss's paper default
    lr_g: Optional[float] = None  # generator learning rate; None = the loss's paper default
    betas: Optional[list[float]] = None  # Adam betas; None = the loss's paper default ((0, 0.9) for WGAN-GP)
    schedule: str = "constant"  # lr factor by generator step: constant (1) | linear (1 - step/train.schedule_steps)


@dataclass
class TrainConfig:
    steps: int = 2000  # generator iterations
    batch_size: int = 64  # per process, for both critic and generator steps
    batch_size_g: int = 0  # per process, generator steps only (128 in the paper's CIFAR code); 0 = train.batch_size
    n_critic: int = 5  # critic steps per generator step
    schedule_steps: Optional[int] = None  # generator steps optim.schedule and loss.gamma_final span; None = train.steps
    ema_decay: float = 0.999  # EMA of generator weights; 0 = no EMA
    precision: Optional[str] = None  # no | bf16 | fp16; None = what `accelerate launch` was told
    cpu: bool = False  # force CPU even when a GPU is present
    max_nonfinite: int = 25  # updates in a row with NaN/Inf gradients skipped before the run stops; 0 = no guard
    cpu_threads: int = 0  # torch threads per process on CPU; 0 = this machine's cores / processes on it
    deepspeed: Optional[str] = None  # ZeRO stage 1 | 2 or a DeepSpeed JSON path; None = the launcher's choice
    timeout_s: int = 600  # seconds a collective waits for the other processes (a dead or hung rank) before erroring


@dataclass
class LogConfig:
    every: int = 50  # generator steps between metric lines (metrics.jsonl, tracker, progress bar)
    sample_every: int = 500  # generator steps between sample grids; 0 = only at the end
    num_samples: int = 64  # images in a sample grid, or generated points in a toy scatter
    tracker: str = "none"  # none | wandb | tensorboard
    project: str = "wgan-gp"  # tracker project name
    entity: Optional[str] = None  # W&B entity (user or team); None = the login's default
    group: Optional[str] = None  # W&B run group (an ablation, a sweep's seeds); None = no group
    tags: list[str] = field(default_factory=list)  # W&B run tags, e.g. log.tags=[cifar,baseline]; [] = none
    job_type: Optional[str] = None  # W&B job type (train, eval, ...); None = none
    notes: Optional[str] = None  # W&B run notes (free text); None = none
    artifacts: str = "generator"  # W&B artifact per checkpoint: none | generator (the export) | checkpoint (+ folder)
    progress: str = "auto"  # auto: tqdm's bar on a terminal, one plain line per log.every otherwise | bar | lines


@dataclass
class CheckpointConfig:
    every: int = 500  # generator steps between checkpoints; 0 = only at the end
    keep: int = 3  # checkpoints kept on disk (oldest removed first); 0 = keep all


@dataclass
class EvalConfig:
    every: int = 0  # generator steps between evaluations (trainer.evaluate, all processes); 0 = off
    num: int = 2000  # generated samples per evaluation, split across processes (toys: W1 on the first 2,000)
    inception_weights: Optional[str] = None  # Inception .pth for FID/KID/IS; None = the torch hub cache
    cache_dir: Optional[str] = None  # classifiers, real-data statistics; None = $WGAN_GP_CACHE or ~/.cache/wgan-gp
    at_end: bool = True  # an offline quality figure beside its real-vs-real baseline at the end (toys, digits, mnist5k)


@dataclass
class SpeedConfig:
    channels_last: Optional[bool] = None  # NHWC conv presets; None = where measured faster (conv-small on CPU)
    compile: bool = False  # torch.compile (speed.compile_scope); False = eager
    compile_scope: str = "loss"  # loss: each whole loss compiled, penalty inside; modules: G and D calls, penalty eager
    compile_backend: str = "inductor"  # torch.compile backend when speed.compile (aot_eager: no codegen, for debugging)
    fused_adam: Optional[bool] = None  # Adam's fused kernel (one launch, sync-free NaN skips); None = on CUDA only
    joint_forward: Optional[bool] = None  # one critic pass over real+fake (else two); None = one on GPUs, two on CPUs
    backward_params_only: bool = True  # critic backward to its weights only (skips x_hat's unused grad); False = plain
    tf32: Optional[bool] = None  # CUDA fp32 modes: None = PyTorch's (TF32 conv, IEEE matmul); True/False = TF32/IEEE
    cuda_graph: bool = False  # one CUDA graph per generator step (1 GPU or DDP, bf16/fp32, fused Adam); False = eager
    cudnn_benchmark: bool = False  # cuDNN times its algorithms per shape once, keeps the fastest; False = heuristics


@dataclass
class Config:
    seed: int = 0  # base seed; process i uses seed + i for noise and data order within its shard
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)


def _known_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys += _known_keys(value, name + ".") if isinstance(value, DictConfig) else [name]
    return keys


MOVED = {  # keys that moved: the old name is refused with the new one
    "speed.penalty_fraction": "loss.penalty_fraction",
    "speed.lazy_penalty": "loss.lazy_penalty",
}


# Interpolation errors whose text names only keys, resolvers or variables, never a value they produced.
VALUE_FREE = (InterpolationKeyError, InterpolationToMissingValueError, UnsupportedInterpolationType)


def _unresolved(err: InterpolationResolutionError) -> str:
    """Why an interpolation failed, without the value it resolved to: OmegaConf's own text quotes that value (a
    type-conversion error says "Value 'tok-...' of type 'str' could not be converted", oc.decode's parser quotes the
    token it stopped at), and a value read from the environment may be a secret that must not reach a log."""
    text = str(err).splitlines()[0]
    if isinstance(err, VALUE_FREE) or re.fullmatch(r"KeyError raised .*\"Environment variable '\w+' not found\"", text):
        return text
    return f"{text.split(':', 1)[0]} (the details are not shown: they may quote the value, which may be a secret)"


def _explain(err: OmegaConfBaseException, source: str) -> TrainerError:
    key = getattr(err, "full_key", None) or "?"
    node = getattr(err, "child_node", None)  # for an interpolation: its `${...}` text as the user wrote it
    text = str(node._value()) if hasattr(node, "_value") else "an interpolation"
    if isinstance(err, InterpolationValidationError):  # resolved, but of the wrong type: never echo the value
        expected = OmegaConf.select(OmegaConf.structured(Config), key) if key != "?" else None
        kind = type(expected).__name__ if expected is not None else "the schema's type"
        return TrainerError(
            f"config key '{key}' has the wrong type (from {source}): the value that {text} gives cannot be converted "
            f"to {kind} (not shown: it may be a secret). It expects {kind}: set the variable to one, or give the "
            f"value directly, e.g. {key}={expected!r}."
        )
    if isinstance(err, InterpolationResolutionError):
        return TrainerError(
            f"config key '{key}' (from {source}) could not be resolved: {text}: {_unresolved(err)}. Set the "
            f"environment variable it names, or give the value directly."
        )
    if "is not a subclass of" in str(err):
        sections = ", ".join(k for k, v in OmegaConf.structured(Config).items() if isinstance(v, DictConfig))
        return TrainerError(
            f"a config section was given a single value (from {source}): {str(err).splitlines()[0]}. Sections "
            f"({sections}) take dotted keys, e.g. train.steps=2000."
        )
    if key in MOVED:
        return TrainerError(
            f"config key '{key}' (from {source}) has moved: it changes the math, so it is now {MOVED[key]}. "
            f"Write {MOVED[key]}=... instead."
        )
    schema = OmegaConf.structured(Config)
    if isinstance(err, ConfigKeyError) or "not in struct" in str(err) or "Key '" in str(err):
        close = difflib.get_close_matches(key, _known_keys(schema), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        section = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(schema, section) if section else schema
        valid = ", ".join(node.keys()) if isinstance(node, DictConfig) else ", ".join(schema.keys())
        return TrainerError(f"unknown config key '{key}' (from {source}).{hint} Valid keys here: {valid}.")
    expected = OmegaConf.select(schema, key) if key != "?" else None
    kind = type(expected).__name__ if expected is not None else "the schema's type"
    return TrainerError(
        f"config key '{key}' has the wrong type (from {source}): {str(err).splitlines()[0]}. "
        f"It expects {kind}, e.g. {key}={expected!r}."
    )


def load_config(config_file: Optional[str] = None, overrides: tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides, parsed (unknown keys, wrong types); raises TrainerError.
    The values are judged by trainer.core.gate.configure, which commands call instead."""
    cfg = OmegaConf.structured(Config)
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            raise TrainerError(
                f"config file '{config_file}' is a folder, not a file. Give one YAML file in it, e.g. "
                f"--config {path / 'digits.yaml' if (path / 'digits.yaml').is_file() else path / 'NAME.yaml'}; "
                f"the shipped ones: {_config_choices()}."
            )
        if not path.is_file():
            raise TrainerError(f"config file '{config_file}' does not exist. Pick one of: {_config_choices()}.")
        cfg = _merge_file(cfg, path)
    for item in overrides:
        if "=" not in item:
            raise TrainerError(f"override '{item}' is not of the form key=value (e.g. train.steps=2000).")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override '{item}'") from None
    raw = _interpolations(cfg)
    try:
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, config_file or "the overrides") from None
    config._raw = raw  # type: ignore[attr-defined]  # written out instead of resolved values (secrets stay out)
    if config.train.precision == "False":  # YAML 1.1 reads `no` as false, which the str field then holds as 'False'
        config.train.precision = "no"
    return config


def _merge_file(cfg: DictConfig, path: Path) -> DictConfig:
    """The YAML file on top of `cfg`; any unreadable or malformed file is one message naming it."""
    problem = None
    try:
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            problem = f"it holds a {type(loaded).__name__.replace('Config', '').lower()}, not a mapping of sections"
        else:
            return OmegaConf.merge(cfg, loaded)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, str(path)) from None
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())[:300]
    except UnicodeDecodeError as err:
        problem = f"it is not UTF-8 text ({err.reason} at byte {err.start})"
    except OSError as err:  # OmegaConf says "Invalid loaded object type: int" for a file holding one scalar
        kind = str(err).rsplit(": ", 1)[-1] if "Invalid loaded object type" in str(err) else ""
        problem = (
            f"it holds a single {kind} value, not a mapping of sections"
            if kind
            else (f"it cannot be read ({err.strerror or err})")
        )
    raise TrainerError(
        f"config file '{path}' is not a valid config: {problem}. A config is a YAML mapping of sections, indented "
        f"with spaces, e.g. 'train:\\n  steps: 2000' (compare configs/digits.yaml)."
    )


def _interpolations(cfg: DictConfig | ListConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key -> its `${...}` text, for every interpolated value (written out as text, never resolved). List
    elements count too (`log.tags=['${oc.env:X}',b]` gives `log.tags.0`): a tag is written out like any value."""
    out: dict[str, str] = {}
    keys = range(len(cfg)) if isinstance(cfg, ListConfig) else cfg.keys()
    for key in keys:
        name, node = f"{prefix}{key}", cfg._get_node(key)  # type: ignore[arg-type]
        if OmegaConf.is_interpolation(cfg, key):  # type: ignore[arg-type]
            out[name] = str(node._value())  # type: ignore[union-attr]
        elif isinstance(node, (DictConfig, ListConfig)):
            out.update(_interpolations(node, name + "."))
    return out


def _config_choices() -> str:
    folder = Path(__file__).resolve().parent.parent / "configs"
    return ", ".join(sorted(str(p.relative_to(folder.parent)) for p in folder.glob("*.yaml"))) or "(none found)"


def _written(cfg: Config) -> DictConfig:
    """`cfg` as written out (config.yaml, checkpoints, trackers): interpolations as their `${...}` text, so a value
    read from the environment (a token, a password) never reaches a file."""
    node = OmegaConf.structured(cfg)
    for key, text in getattr(cfg, "_raw", {}).items():
        OmegaConf.update(node, key, text, force_add=False)
    return node


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(_written(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(_written(cfg))  # type: ignore[return-value]
