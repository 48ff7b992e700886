"""Learning-rate schedules over generator steps (the paper's CIFAR-10 ResNet decays both rates linearly to 0)."""

from __future__ import annotations

SCHEDULES = ("constant", "linear")


def horizon(cfg) -> int:
    """The generator steps the schedules span (optim.schedule, loss.gamma_final): train.schedule_steps, else
    train.steps. A fixed horizon lets a run be trained in chunks (run.resume=latest with a higher train.steps each
    time) on the schedule it would follow in one go."""
    return cfg.train.schedule_steps or cfg.train.steps


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of the base learning rate after `step` generator steps out of `total`."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":  # gan_cifar_resnet.py: decay = max(0, 1 - iteration / ITERS)
        return max(0.0, 1.0 - step / total)
    raise ValueError(f"optim.schedule={schedule!r} is not a valid choice. Valid choices: {', '.join(SCHEDULES)}.")
