"""A config checked against the registries (models, datasets, losses, crops, schedules): what commands load.

trainer.config parses and checks values and knows no registry; this module checks the names and combinations that
only the registries can judge, before any model is built.
"""

from __future__ import annotations

from typing import Optional

from trainer.accel import zero
from trainer.config import Config, _choice, load_config
from trainer.core.augment import POLICIES, parse_policy
from trainer.core.losses import LOSSES
from trainer.core.schedule import SCHEDULES
from trainer.data.files import CROPS
from trainer.data.registry import DATASETS, DatasetSpec
from trainer.errors import TrainerError
from trainer.nets.models import PRESETS, Preset


def configure(config_file: Optional[str] = None, overrides: tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides, validated, then checked here. Raises TrainerError."""
    cfg = load_config(config_file, overrides)
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    _choice("model.name", cfg.model.name, sorted(PRESETS))
    _choice("data.name", cfg.data.name, sorted(DATASETS))
    _choice("loss.name", cfg.loss.name, list(LOSSES))  # in the registry's order: the paper's first
    _choice("data.crop", cfg.data.crop, CROPS)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _check_augment(cfg)
    optimizer = cfg.optim.name or LOSSES[cfg.loss.name].optimizer
    if cfg.speed.fused_adam is True and optimizer != "adam":
        raise TrainerError(
            f"speed.fused_adam=true selects Adam's kernel, but the optimizer is {optimizer}. "
            f"Set optim.name=adam or speed.fused_adam=false."
        )
    if cfg.speed.cuda_graph and optimizer != "adam":
        raise TrainerError(
            f"speed.cuda_graph=true cannot run with optim.name={optimizer} (the graph needs Adam's fused kernel). "
            f"Use optim.name=adam, or drop speed.cuda_graph."
        )
    if LOSSES[cfg.loss.name].clip and zero.requested(cfg) is not None:
        raise TrainerError(
            f"loss.name={cfg.loss.name} is not supported under DeepSpeed: ZeRO keeps its own float32 copy of the "
            "weights, so clipping the module's weights would be undone by the next step. Train it without DeepSpeed."
        )
    if cfg.speed.compile and cfg.speed.compile_scope == "loss" and zero.requested(cfg) is not None:
        raise TrainerError(
            "speed.compile=true compiles each whole loss, which under DeepSpeed traces into the engines' forward: "
            "their step counters change every step and recompile it until torch.compile gives up. Under DeepSpeed use "
            "speed.compile_scope=modules (G and the critic's calls compiled, the penalty eager), or train with DDP."
        )
    if cfg.model.conditional:
        _check_conditional(cfg)
    _check_compatible(cfg, DATASETS[cfg.data.name], PRESETS[cfg.model.name])


def _check_augment(cfg: Config) -> None:
    """data.augment: DiffAugment policy names, on image data only."""
    for name in parse_policy(cfg.data.augment):
        if name not in POLICIES:
            raise TrainerError(
                f"data.augment={cfg.data.augment!r}: '{name}' is not a DiffAugment policy. Use a comma-separated "
                f"subset of {', '.join(POLICIES)}, e.g. data.augment=color,translation,cutout, or leave it empty."
            )
    if parse_policy(cfg.data.augment) and cfg.speed.cuda_graph:  # its random draws inside a capture: not verified
        raise TrainerError(
            f"data.augment={cfg.data.augment} cannot run with speed.cuda_graph=true yet (random augmentations inside a "
            f"captured graph are not verified). Drop speed.cuda_graph, or data.augment."
        )
    if parse_policy(cfg.data.augment) and DATASETS[cfg.data.name].is_toy:
        raise TrainerError(
            f"data.augment={cfg.data.augment} augments images, but data.name={cfg.data.name} is 2-D toy data. "
            f"Drop data.augment."
        )


def _check_conditional(cfg: Config) -> None:
    if not PRESETS[cfg.model.name].conditional:
        fits = ", ".join(sorted(n for n, p in PRESETS.items() if p.conditional))
        raise TrainerError(f"model.conditional=true: model.name={cfg.model.name} has no conditional form. Use: {fits}.")
    if not DATASETS[cfg.data.name].num_classes:
        labelled = ", ".join(sorted(n for n, d in DATASETS.items() if d.num_classes))
        raise TrainerError(
            f"model.conditional=true needs class labels, but data.name={cfg.data.name} has none. Labelled: {labelled}."
        )


def _check_compatible(cfg: Config, dataset: DatasetSpec, preset: Preset) -> None:
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
