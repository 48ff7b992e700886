"""Graceful stop: SIGUSR1/SIGTERM/SIGINT set a flag; all processes agree after a step, checkpoint and exit.

`install()` runs first thing in train.py (before torch is imported), so a signal during start-up is recorded too
and the run stops after its first step with a checkpoint. A process started by a launcher that dies (SIGTERM to
`accelerate launch`) gets SIGTERM itself, so it also stops with a checkpoint instead of training on orphaned.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Any

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; rerun with run.resume=latest
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_received = {"signum": 0}  # the first stop signal of this process


class Preempted(Exception):
    """Raised after the checkpoint is written, to leave the loop and exit with EXIT_PREEMPTED."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} after writing a checkpoint")
        self.signum, self.step = signum, step


def _handle(signum: int, frame: object) -> None:
    if _received["signum"] and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C aborts at once, for an impatient user
    _received["signum"] = _received["signum"] or signum


def install() -> None:
    """Records stop signals from now on (main thread only); asks Linux for SIGTERM if the parent launcher dies."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handle)
    if sys.platform.startswith("linux") and "accelerate" in _parent_command():
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            _received["signum"] = _received["signum"] or signal.SIGTERM


def _parent_command() -> str:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class StopFlag:
    """The stop signal received so far (also before this object existed, once `install()` ran)."""

    def __init__(self) -> None:
        if signal.getsignal(signal.SIGTERM) is not _handle:
            install()

    @property
    def signum(self) -> int:
        return _received["signum"]

    def agreed(self, accelerator: Any) -> int:
        """The signal any process received (0 if none). Collective: every process calls it at the same step."""
        if accelerator.num_processes == 1:
            return self.signum
        import torch

        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.gather(flag).max().item())
