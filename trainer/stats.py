"""Training statistics: report(name, value) during the step, reduced across processes once per log interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from torch import Tensor


class Stats:
    """Running sums kept as device tensors, so reporting never synchronises with the device."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def report(self, name: str, value: Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float().mean()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        """Means since the last call, averaged over processes (every process must call this together)."""
        names = sorted(self.sums)
        if not names:
            return {}
        local = torch.stack([self.sums[n] / self.counts[n] for n in names]).to(accelerator.device)
        means = accelerator.reduce(local, reduction="mean").tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(names, means, strict=False))


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
