"""Learning-rate schedules over generator steps (the paper's CIFAR-10 ResNet decays both rates linearly to 0)."""

from __future__ import annotations

SCHEDULES = ("constant", "linear")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of the base learning rate after `step` generator steps out of `total`."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":  # gan_cifar_resnet.py: decay = max(0, 1 - iteration / ITERS)
        return max(0.0, 1.0 - step / total)
    raise ValueError(f"optim.schedule={schedule!r} is not a valid choice. Valid choices: {', '.join(SCHEDULES)}.")
