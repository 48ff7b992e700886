"""Training statistics: report(name, value) during the step, reduced across processes once per log interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from torch import Tensor


class Stats:
    """Running means and maxima kept as device tensors, so reporting never synchronises with the device.

    `report(name, values)` adds NAME (mean of all values reported in the interval); `report_spread` also adds
    NAME_std and NAME_max over all individual values of the interval, on every process together.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, Tensor] = {}

    def report(self, name: str, value: Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float().mean()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, record: dict[str, Tensor]) -> None:
        """A step's statistics: scalars by `report`, vectors (per-sample values) by `report_spread`."""
        for name, value in record.items():
            if isinstance(value, Tensor) and value.dim() > 0:
                self.report_spread(name, value)
            else:
                self.report(name, value)

    def report_spread(self, name: str, values: Tensor) -> None:
        values = values.detach().float()
        self.report(name, values)
        self.report(f"{name}_sq", values.pow(2))
        peak = values.max()
        self.maxima[f"{name}_max"] = (
            torch.maximum(self.maxima[f"{name}_max"], peak) if f"{name}_max" in self.maxima else peak
        )

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        """Values since the last call over all processes (every process must call this together)."""
        names, peaks = sorted(self.sums), sorted(self.maxima)
        if not names:
            return {}
        values = [self.sums[n] / self.counts[n] for n in names] + [self.maxima[n] for n in peaks]
        local = torch.stack([v.to(accelerator.device) for v in values])  # host-side timings join device values
        every = accelerator.gather(local.to(accelerator.device)).reshape(-1, len(names) + len(peaks))
        means, maxima = every[:, : len(names)].mean(0).tolist(), every[:, len(names) :].max(0).values.tolist()
        out = dict(zip(names, means, strict=True)) | dict(zip(peaks, maxima, strict=True))
        for name in [n[:-3] for n in names if n.endswith("_sq")]:
            out[f"{name}_std"] = max(out.pop(f"{name}_sq") - out[name] ** 2, 0.0) ** 0.5
        self.sums, self.counts, self.maxima = {}, {}, {}
        return out


class MetricsFile:
    """metrics.jsonl in the run folder, one JSON object per log interval, flushed at once; main process only."""

    def __init__(self, path: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled and resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """A resumed run replays the steps after its checkpoint: drop their old lines so no step appears twice."""
        kept = [
            line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
