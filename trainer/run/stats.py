"""Training statistics: report(name, value) during the step, reduced across processes once per log interval."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor

from trainer.errors import TrainerError


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

    def state_dict(self) -> dict:
        """The running sums of the current log interval (checkpointed, so a resume logs the same next line)."""
        return {
            "sums": {n: float(v) for n, v in self.sums.items()},
            "counts": dict(self.counts),
            "maxima": {n: float(v) for n, v in self.maxima.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["sums"].items()}
        self.counts = dict(state["counts"])
        self.maxima = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["maxima"].items()}

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
    """metrics.jsonl in the run folder, one JSON object per log interval, flushed at once; main process only.

    A run starting at step S keeps exactly the lines of steps <= S (a resumed run replays the steps after its
    checkpoint; a fresh one, S = 0, replaces the lines of a run that saved no checkpoint), and drops a line cut by a
    crash or a full disk. A write that fails leaves the file as it was before it: whole lines only.
    """

    def __init__(self, path: Path, enabled: bool, start_step: int) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled and self.path.exists():
            self._keep_until(start_step)

    def _keep_until(self, step: int) -> None:
        kept, dropped = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                dropped += bool(line.strip())  # cut by a kill or a full disk
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            print(
                f"[wgan-gp] {self.path}: {dropped} line(s) after step {step} or cut off replaced by this run",
                flush=True,
            )
            self._rewrite("".join(line + "\n" for line in kept))

    def _rewrite(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise self._failed(err) from None

    def _failed(self, err: OSError) -> TrainerError:
        return TrainerError(
            f"writing {self.path} failed ({err.strerror or err}); it still holds every earlier line intact. Free "
            f"space or fix permissions there, then continue with run.resume=latest."
        )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = memoryview((json.dumps(record) + "\n").encode())
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise self._failed(err) from None
        try:
            size = os.fstat(fd).st_size
            while line:
                line = line[os.write(fd, line) :]  # a full disk may take part of the line, then refuse the rest
        except OSError as err:
            os.ftruncate(fd, size)  # no half line: the next resume reads every line
            raise self._failed(err) from None
        finally:
            os.close(fd)
