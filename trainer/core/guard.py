"""The non-finite guard: an update whose gradients hold a NaN/Inf is skipped on every process alike and counted."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from trainer.core.clock import Clock
from trainer.errors import TrainerError


class NonFiniteGuard:
    """Skips updates whose gradients are NaN/Inf and stops the run after `limit` skipped updates in a row.

    Gradients are checked after DDP's all-reduce, so every process sees the same verdict and skips alike. Under fp16
    the GradScaler already skips such steps (and lowers its scale); `scaler_skipped()` reports those, counted alike.

    With a fused optimizer (Adam's fused kernel, the default on CUDA) the verdict never leaves the device: it goes to
    the kernel as `found_inf`, which then leaves weights, moments and step count untouched (as under GradScaler), and
    the counts are device tensors updated in place (so a CUDA graph that captured the update keeps counting).
    `check()`, at every log interval and before every checkpoint, reads them and stops the run then, so no
    checkpoint is written after `limit` skips in a row. Otherwise the verdict is read at once (a device sync per
    update, free on CPU).
    """

    def __init__(
        self,
        limit: int,
        run_dir: str,
        scaler_skipped: Optional[Callable[[], bool]] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        self.limit, self.run_dir, self.scaler_skipped = limit, run_dir, scaler_skipped
        self.host_total, self.in_a_row = 0, {}  # in_a_row: per optimizer
        self.counts: dict[int, Tensor] = {}  # per fused optimizer, on its device: (skipped, in a row, worst)
        self.clock = clock or Clock()  # the run's step counter, for the message

    def step(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        """optimizer.step(), unless the gradients of `module` are not finite."""
        fused = _fused_inner(optimizer)
        if self.limit and self.scaler_skipped is None and fused is not None:
            found = _nonfinite_flag(module)
            fused.found_inf = found
            try:
                optimizer.step()
            finally:
                del fused.found_inf
            return self._count_on_device(id(optimizer), found)
        if self.limit and self.scaler_skipped is None and bool(_nonfinite_flag(module).item()):
            optimizer.zero_grad(set_to_none=True)
            return self._skipped(id(optimizer))
        optimizer.step()
        if self.scaler_skipped is not None and self.scaler_skipped():
            return self._skipped(id(optimizer))
        self.in_a_row[id(optimizer)] = 0

    @property
    def total(self) -> int:
        """Updates skipped so far (reads the device counts: call it at log time, not inside the step)."""
        return self.host_total + sum(int(c[0].item()) for c in self.counts.values())

    def check(self) -> None:
        """Stops the run if a fused optimizer skipped `limit` updates in a row (reads the device counts)."""
        for counts in self.counts.values():
            if self.limit and counts[2].item() >= self.limit:
                self._stop()

    def _count_on_device(self, key: int, found: Tensor) -> None:
        if key not in self.counts:
            self.counts[key] = torch.zeros(3, device=found.device)
        counts = self.counts[key]
        total, in_a_row, worst = counts.unbind()
        in_a_row = (in_a_row + found) * found
        counts.copy_(torch.stack([total + found, in_a_row, torch.maximum(worst, in_a_row)]))

    def _skipped(self, key: int) -> None:
        self.in_a_row[key], self.host_total = self.in_a_row.get(key, 0) + 1, self.host_total + 1
        if self.limit and self.in_a_row[key] >= self.limit:
            self._stop()

    def _stop(self) -> None:
        raise TrainerError(
            f"{self.limit} updates in a row had non-finite (NaN/Inf) gradients (seen by step {self.clock.step}); the "
            f"run stopped without writing a checkpoint, so the last good one in {self.run_dir}/checkpoints is intact. "
            f"Lower optim.lr_d/lr_g, check the data for NaNs, or use train.precision=bf16 instead of fp16; resume "
            f"with run.resume=latest (train.max_nonfinite sets how many skips in a row are tolerated)."
        )


def _fused_inner(optimizer: torch.optim.Optimizer) -> Optional[torch.optim.Optimizer]:
    """The torch optimizer inside Accelerate's wrapper when all its groups run a fused kernel that takes found_inf."""
    inner = getattr(optimizer, "optimizer", optimizer)
    fusable = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD))
    return inner if fusable and all(g.get("fused") for g in inner.param_groups) else None


def _nonfinite_flag(module: nn.Module) -> Tensor:
    """float32 scalar on the gradients' device: 1 if any gradient holds a NaN/Inf, else 0 (no host sync)."""
    grads = [q.grad for q in module.parameters() if q.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    norms = torch._foreach_norm(grads)  # one fused pass; a NaN/Inf anywhere makes its tensor's norm non-finite
    return (~torch.isfinite(torch.stack(norms).float().sum())).float()
