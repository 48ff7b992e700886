"""Model FLOPs of a step (torch.utils.flop_counter) and the dense peak FLOP/s of common GPUs, by device name."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets: bf16/fp16 and TF32 on tensor cores, fp32 on CUDA cores.
# Matched by substring of torch.cuda.get_device_name, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},  # SXM ("H100 80GB HBM3")
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks break inside autograd.grad."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` (forwards, backwards and the penalty's double backward), counted eagerly.

    Compiled modules run eagerly here (set_stance), so inductor kernels, which dispatch no aten ops, are not missed.
    Only the total is kept: the per-module breakdown's hooks fail on the penalty's autograd.grad.
    """
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with torch.compiler.set_stance("force_eager"), counter:
        step()
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str, tf32: bool, override: float = 0.0) -> tuple[Optional[float], str]:
    """(peak TFLOP/s, what it is) for the trainer's precision on `device`; None when unknown (CPU, unlisted GPU)."""
    if override > 0:
        return override, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no table for CPUs; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    kind = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    for key, peaks in PEAK_TFLOPS.items():
        if key in name and kind in peaks:
            return peaks[kind], f"{key} dense {kind} peak from NVIDIA's datasheet"
    return None, f"{name} ({kind}) is not in trainer.flops.PEAK_TFLOPS; pass --peak-tflops"
