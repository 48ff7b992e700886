"""Run-time facts of the machine, judged once the Accelerator exists and before any data or model: the device's
precision and memory."""

from __future__ import annotations

import os

from trainer.config import Config
from trainer.errors import TrainerError


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
