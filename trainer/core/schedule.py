"""Learning-rate schedules over generator steps (the paper's CIFAR-10 ResNet decays both rates linearly to 0)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from trainer.config import Config

SCHEDULES = ("constant", "linear")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of the base learning rate after `step` generator steps out of `total`."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":  # gan_cifar_resnet.py: decay = max(0, 1 - iteration / ITERS)
        return max(0.0, 1.0 - step / total)
    raise ValueError(f"optim.schedule={schedule!r} is not a valid choice. Valid choices: {', '.join(SCHEDULES)}.")


def make_scheduler(optimizer: Optimizer, schedule: str, total_steps: int) -> LambdaLR:
    """A LambdaLR applying `schedule` to `optimizer`; call .step() once per generator step (critic's too).

    Its state (the step count) is saved and restored with `accelerator.register_for_checkpointing(scheduler)`.
    Do not pass it through `accelerator.prepare`: Accelerate's wrapper steps it once per process on every call.
    """
    return LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total_steps))


def make_schedulers(cfg: "Config", opt_g: Optimizer, opt_d: Optimizer) -> tuple[LambdaLR, LambdaLR]:
    """The generator's and the critic's schedulers from optim.schedule and train.steps."""
    return (
        make_scheduler(opt_g, cfg.optim.schedule, cfg.train.steps),
        make_scheduler(opt_d, cfg.optim.schedule, cfg.train.steps),
    )
