"""The gate's concerns that read the registries: names (presets, datasets, losses, crops, schedules), what a loss's
optimizer, penalty and pairing allow, and data against network (augmentation, labels, shapes)."""

from __future__ import annotations

from trainer.config import Config
from trainer.core.gate.values import choice
from trainer.errors import TrainerError


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
