"""Phase timings (critic, penalty, generator) on the steps that ask for them, and peak memory: what gets logged."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, ContextManager

import torch


class PhaseTimer:
    """Milliseconds per phase, measured (with device syncs) only on steps where `enabled` is set: one per log interval.

    `penalty` is the interpolates' forward and first (input-gradient) backward; its double backward runs inside the
    critic's single backward and counts as `critic`, which `split()` reports without the penalty part.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.enabled, self.ms = False, {}

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)

    def around(self, name: str) -> Callable[[], ContextManager]:
        """A zero-argument context factory timing `name` (the penalty's hook, trainer.core.losses.Penalty.around)."""
        return lambda: self.phase(name)

    def split(self) -> dict[str, float]:
        """{time_critic_ms, time_penalty_ms, time_generator_ms} of the timed steps (critic without the penalty)."""
        penalty = self.ms.get("penalty", 0.0)
        return {
            "time_critic_ms": self.ms.get("critic", 0.0) - penalty,
            "time_penalty_ms": penalty,
            "time_generator_ms": self.ms.get("generator", 0.0),
        }

    def report(self, stats) -> None:
        """Adds the timed steps' split to `stats` (trainer.run.stats.Stats), then waits for the next timed step."""
        if self.ms:
            for name, ms in self.split().items():
                stats.report(name, ms)
        self.reset()

    def reset(self) -> None:
        self.enabled, self.ms = False, {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated by tensors; on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
