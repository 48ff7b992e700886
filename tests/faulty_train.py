"""train.py with faults injected for tests, chosen by environment variables (the product carries no test hooks).

WGAN_GP_FAULT_NAN_AT=STEP[@RANK],...  the critic loss is NaN in generator step STEP (1-based) on every process,
                                      or on process RANK only
WGAN_GP_FAULT_SLOW_SAVE=SECONDS       a checkpoint waits this long, complete but not yet renamed into place
WGAN_GP_EMULATE_CUDA_GRAPH=1          speed.cuda_graph on the CPU through tests/graph_emulation.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # graph_emulation
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, as train.py has it


def nan_steps(spec: str) -> set[tuple[int, int]]:
    """ "3,4@1": NaN at step 3 on every process (-1) and at step 4 on process 1 only."""
    out = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        step, _, rank = item.partition("@")
        out.add((int(step), int(rank) if rank else -1))
    return out


def inject_nan(spec: str) -> None:
    from trainer.core import loop, losses

    faults, now = nan_steps(spec), {"step": 0, "rank": 0}
    train_step, critic_loss = loop.train_step, losses.Objective.critic_loss

    def counting_step(t, eager=False):
        now.update(step=t.state.step + 1, rank=t.accelerator.process_index)
        return train_step(t, eager)

    def poisoned_loss(self, batch):
        loss, stats = critic_loss(self, batch)
        if faults & {(now["step"], -1), (now["step"], now["rank"])}:
            loss = loss * float("nan")
        return loss, stats

    loop.train_step, losses.Objective.critic_loss = counting_step, poisoned_loss


def slow_save(seconds: float) -> None:
    from trainer.run import checkpoint

    publish = checkpoint.publish

    def slowly(tmp, final):
        time.sleep(seconds)  # widens the window in which a kill -9 finds a complete but unpublished checkpoint
        publish(tmp, final)

    checkpoint.publish = slowly


def emulate_cuda_graph() -> None:
    from graph_emulation import EmulatedBackend

    from trainer.accel import cuda_graph

    cuda_graph.BACKEND = EmulatedBackend()


if __name__ == "__main__":
    if os.environ.get("WGAN_GP_FAULT_NAN_AT"):
        inject_nan(os.environ["WGAN_GP_FAULT_NAN_AT"])
    if os.environ.get("WGAN_GP_FAULT_SLOW_SAVE"):
        slow_save(float(os.environ["WGAN_GP_FAULT_SLOW_SAVE"]))
    if os.environ.get("WGAN_GP_EMULATE_CUDA_GRAPH") == "1":
        emulate_cuda_graph()
    from trainer.cli import main

    sys.exit(main())
