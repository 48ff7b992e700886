"""trainer.run.stats: values reported on the device and on the host (phase timings) reduce together."""

from __future__ import annotations

import pytest
import torch

from trainer.accel.timer import PhaseTimer
from trainer.run.stats import Stats


class _Accelerator:
    """What Stats.reduce asks of Accelerate, on a stand-in device ('meta' refuses mixed devices, as CUDA does)."""

    def __init__(self, device: str) -> None:
        self.device, self.seen = torch.device(device), []

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.seen.append(tensor.device)
        return torch.arange(tensor.numel(), dtype=torch.float32)  # meta tensors hold no values


def test_host_timings_reduce_with_device_values() -> None:
    """On a GPU the losses live on the device and PhaseTimer's milliseconds on the host; one gather takes both
    (this mix crashed train.py at its first log line on CUDA)."""
    stats, timer = Stats(), PhaseTimer()
    stats.report("loss_d", torch.ones(4, device="meta"))
    timer.ms = {"critic": 12.0, "penalty": 2.0, "generator": 3.0}
    timer.report(stats)
    accelerator = _Accelerator("meta")
    out = stats.reduce(accelerator)  # type: ignore[arg-type]
    assert accelerator.seen == [torch.device("meta")]
    assert set(out) == {"loss_d", "time_critic_ms", "time_penalty_ms", "time_generator_ms"}


def test_means_std_and_max_over_the_interval() -> None:
    stats, values = Stats(), torch.tensor([1.0, 2.0, 3.0, 6.0])
    stats.report_spread("g", values[:2])
    stats.report_spread("g", values[2:])

    class Cpu:
        device = torch.device("cpu")

        @staticmethod
        def gather(tensor):
            return tensor

    out = stats.reduce(Cpu())  # type: ignore[arg-type]
    assert out["g"] == pytest.approx(values.mean().item())
    assert out["g_max"] == 6.0
    assert out["g_std"] == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)
