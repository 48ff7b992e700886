"""train.py with faults injected for tests, chosen by environment variables (the product carries no test hooks).

WGAN_GP_FAULT_NAN_AT=STEP[@RANK],...  the critic loss is NaN in generator step STEP (1-based) on every process,
                                      or on process RANK only
WGAN_GP_FAULT_SLOW_SAVE=SECONDS       a checkpoint waits this long, complete but not yet renamed into place
WGAN_GP_FAULT_KILL_AT=STEP:POINT      the process kill -9s itself at POINT of generator step STEP: `lock` (start-up,
                                      run folder locked), `step` (after the step's update), `metrics` (half of the
                                      step's metrics line written), `save` (inside the checkpoint write, after
                                      Accelerate's files and one more), `publish` (complete, not yet renamed), `prune`
                                      (while an old checkpoint is half deleted)
WGAN_GP_FAULT_INF_WEIGHT_AT=STEP      a critic weight becomes +Inf after generator step STEP (a diverged update)
WGAN_GP_EMULATE_CUDA_GRAPH=1          speed.cuda_graph on the CPU through tests/graph_emulation.py; at exit each
                                      process prints `[emulated graph] rank R: N replays`
WGAN_GP_EMULATE_CUDA_GRAPH=drop-collectives
                                      the same, but the emulated graph leaves out the collectives (DDP's all-reduces)
                                      it saw during the capture: a control for the tests that they are replayed
WGAN_GP_FORCE_DDP=1                   DDP around the networks also at world size 1 (`torchrun --nproc_per_node 1` on
                                      one GPU: DDP's reducer and NCCL's all-reduce kernels run, as on several GPUs);
                                      at exit prints `[force-ddp] rank R: D DDP modules in the graph, N replays`
"""

from __future__ import annotations

import json
import os
import signal
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
        now.update(step=t.parts.clock.step + 1, rank=t.accelerator.process_index)
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


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(spec: str) -> None:
    """Self-inflicted kill -9 at one chosen point (see the module docstring); the caller checks exit code -9."""
    from trainer.core import loop
    from trainer.run import checkpoint, folder, stats

    step, point = int(spec.split(":")[0]), spec.split(":")[1]
    saving = {"step": -1}
    if point == "lock":
        lock = folder.lock

        def lock_then_die(run_dir):
            lock(run_dir)
            die()

        folder.lock = lock_then_die
    if point == "step":
        train_step = loop.train_step

        def step_then_die(t, eager=False):
            train_step(t, eager)
            if t.parts.clock.step == step:
                die()

        loop.train_step = step_then_die
    if point == "metrics":
        write = stats.MetricsFile.write

        def half_line(self, record):
            if record["step"] == step:
                line = (json.dumps(record) + "\n").encode()
                with open(self.path, "ab") as f:
                    f.write(line[: len(line) // 2])
                die()
            write(self, record)

        stats.MetricsFile.write = half_line
    save, save_file, publish, prune = checkpoint.save, checkpoint.save_file, checkpoint.publish, checkpoint._prune

    def noting_save(accelerator, run_dir, snapshot, *args):
        saving["step"] = snapshot.step  # checkpoint.save(accelerator, run_dir, Snapshot, keep)
        return save(accelerator, run_dir, snapshot, *args)

    def file_then_die(tensors, path):
        save_file(tensors, path)
        if point == "save" and saving["step"] == step:
            die()

    def die_before(tmp, final):
        if point == "publish" and saving["step"] == step:
            die()
        publish(tmp, final)

    def half_prune(run_dir, keep):
        old = checkpoint.list_checkpoints(run_dir)[:-keep] if keep else []
        if point == "prune" and saving["step"] == step and old:
            for f in sorted(old[0].iterdir())[::2]:
                f.unlink()
            die()
        prune(run_dir, keep)

    checkpoint.save, checkpoint.save_file, checkpoint.publish, checkpoint._prune = (
        noting_save,
        file_then_die,
        die_before,
        half_prune,
    )


def inf_weight_at(step: int) -> None:
    import torch

    from trainer.core import loop

    train_step = loop.train_step

    def poisoning_step(t, eager=False):
        train_step(t, eager)
        if t.parts.clock.step == step:
            with torch.no_grad():
                next(t.parts.critic.parameters()).view(-1)[0] = float("inf")

    loop.train_step = poisoning_step


def emulate_cuda_graph(mode: str) -> None:
    import atexit

    import graph_emulation

    from trainer.accel import cuda_graph

    backend = graph_emulation.EmulatedBackend(drop_collectives=mode == "drop-collectives")
    cuda_graph.BACKEND = backend
    rank = os.environ.get("RANK", "0")
    atexit.register(lambda: print(f"[emulated graph] rank {rank}: {backend.replays()} replays", flush=True))


def force_ddp() -> None:
    import atexit

    import torch.distributed as dist
    from accelerate import Accelerator

    from trainer.accel import cuda_graph

    Accelerator.multi_device = property(lambda self: dist.is_initialized())  # Accelerate wraps DDP from 2 processes
    if os.environ.get("ACCELERATE_USE_CPU") == "1":
        os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = "true"  # on the CPU, DDP without device_ids
    seen = {"ddp": 0, "replays": 0}
    init, call = cuda_graph.GraphedIteration.__init__, cuda_graph.GraphedIteration.__call__

    def counting_init(self, run, inputs, sample_shape, optimizers, modules=()):
        seen["ddp"] = len(cuda_graph.ddp_modules(modules))
        init(self, run, inputs, sample_shape, optimizers, modules)

    def counting_call(self):
        captured = self.graph is not None
        records = call(self)
        seen["replays"] += captured and not self.failed
        return records

    cuda_graph.GraphedIteration.__init__, cuda_graph.GraphedIteration.__call__ = counting_init, counting_call
    rank = os.environ.get("RANK", "0")
    report = f"[force-ddp] rank {rank}: {{ddp}} DDP modules in the graph, {{replays}} replays"
    atexit.register(lambda: print(report.format(**seen), flush=True))


if __name__ == "__main__":
    if os.environ.get("WGAN_GP_FAULT_NAN_AT"):
        inject_nan(os.environ["WGAN_GP_FAULT_NAN_AT"])
    if os.environ.get("WGAN_GP_FAULT_SLOW_SAVE"):
        slow_save(float(os.environ["WGAN_GP_FAULT_SLOW_SAVE"]))
    if os.environ.get("WGAN_GP_FAULT_KILL_AT"):
        kill_at(os.environ["WGAN_GP_FAULT_KILL_AT"])
    if os.environ.get("WGAN_GP_FAULT_INF_WEIGHT_AT"):
        inf_weight_at(int(os.environ["WGAN_GP_FAULT_INF_WEIGHT_AT"]))
    if os.environ.get("WGAN_GP_EMULATE_CUDA_GRAPH"):
        emulate_cuda_graph(os.environ["WGAN_GP_EMULATE_CUDA_GRAPH"])
    if os.environ.get("WGAN_GP_FORCE_DDP") == "1":
        force_ddp()
    from trainer.accel.shutdown import exit_process
    from trainer.cli import main

    exit_process(main())
