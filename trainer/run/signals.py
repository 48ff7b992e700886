"""Graceful stop: SIGUSR1/SIGTERM/SIGINT set a flag; all processes agree after a step, checkpoint and exit."""

from __future__ import annotations

import signal
import threading

import torch
from accelerate import Accelerator

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; rerun with run.resume=latest
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Raised after the checkpoint is written, to leave the loop and exit with EXIT_PREEMPTED."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} after writing a checkpoint")
        self.signum, self.step = signum, step


class StopFlag:
    """Records the first stop signal; a second SIGINT aborts at once (KeyboardInterrupt) for an impatient user."""

    def __init__(self) -> None:
        self.signum = 0
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def agreed(self, accelerator: Accelerator) -> int:
        """The signal any process received (0 if none). Collective: every process calls it at the same step."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.gather(flag).max().item())
