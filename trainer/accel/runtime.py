"""Accelerate setup, rank hygiene and the fp32 forward used by the gradient penalty."""

from __future__ import annotations

import hashlib
import os
import warnings
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, DistributedDataParallelKwargs, InitProcessGroupKwargs
from torch import Tensor, nn

from trainer.accel import zero as deepspeed_support
from trainer.config import Config
from trainer.errors import TrainerError


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator for this launch (the launcher's flags already in `cfg`: trainer.core.gate.configure); refuses a
    launch whose WORLD_SIZE differs from the processes that joined."""
    cpu = cfg.train.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    tracker = None if cfg.log.tracker == "none" else cfg.log.tracker
    # A collective that waits longer than this for a dead or hung process raises instead of hanging the job.
    init = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.timeout_s))
    handlers: list = [init]
    if cfg.speed.cuda_graph:
        handlers.extend(graph_handlers())
    plugins = deepspeed_support.make_plugins(cfg, launch_precision(cfg))
    if plugins is not None:
        # Accelerate enables DeepSpeed only off its CPU mode; without CUDA the engines then run on CPU over gloo.
        cpu = False
        os.environ.pop("ACCELERATE_USE_CPU", None)
        if not torch.cuda.is_available():
            init.backend = "gloo"
            deepspeed_support.use_plain_gloo()
    accelerator = Accelerator(
        mixed_precision=cfg.train.precision,
        cpu=cpu,
        log_with=tracker,
        project_dir=cfg.run.dir,
        kwargs_handlers=handlers,
        deepspeed_plugins=plugins,
        dynamo_backend="no",  # --dynamo_backend became speed.compile (launcher_flags): Accelerate compiles nothing
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise TrainerError(
            f"the launcher started WORLD_SIZE={launched} processes but Accelerate joined them as "
            f"{accelerator.num_processes} (this is rank {accelerator.process_index} of {accelerator.num_processes}): "
            f"every process would train alone and write the same run folder. This happens with "
            f"`accelerate launch --multi_gpu` on a machine without GPUs. For several CPU processes use "
            f"`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node {launched} train.py ...`; on GPUs check that "
            f"{launched} GPUs are visible (nvidia-smi, CUDA_VISIBLE_DEVICES)."
        )
    if accelerator.device.type == "cpu":
        # `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise; on a CPU that leaves cores idle.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(cfg.train.cpu_threads or max(1, (os.cpu_count() or 1) // local))
        busy = busy_cpu_warning(torch.get_num_threads(), cfg.train.cpu_threads)
        if busy and accelerator.is_main_process:
            print(busy, flush=True)
    return accelerator


def graph_handlers() -> list:
    """What speed.cuda_graph asks of Accelerate, before the process group starts (PyTorch's CUDA graph docs).

    Autocast's cast-weight cache must not outlive a capture. Under DDP: NCCL's asynchronous error handling off (its
    watchdog would abort a captured collective; a hung rank is then no longer stopped by train.timeout_s) and DDP's
    static graph (the captured reducer replays one fixed bucket order). Harmless on one process.
    """
    from trainer.accel.cuda_graph import ASYNC_ERROR_HANDLING

    os.environ[ASYNC_ERROR_HANDLING] = "0"
    return [AutocastKwargs(cache_enabled=False), DistributedDataParallelKwargs(static_graph=True)]


def busy_cpu_warning(threads: int, requested: int) -> str:
    """A warning when other work already keeps this machine's cores busy and the thread count was left to us.

    The count is not lowered automatically: it changes the float32 summation order, so a run's numbers would then
    depend on the load at its start (a resume could not match). Measured on 2 cores at load 5: 2 threads per process
    ran 4-10x slower than 1 (README: Measured).
    """
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if requested or threads == 1 or load < cores:
        return ""
    return (
        f"[wgan-gp] warning: this CPU is busy (load average {load:.1f} on {cores} cores); {threads} torch threads per "
        f"process can run several times slower than 1 under contention: set train.cpu_threads=1 (or fewer processes)."
    )


def prepare_pair(
    accelerator: Accelerator,
    generator: nn.Module,
    critic: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    """Wraps both networks and optimizers for the launch (DDP, mixed precision, or one DeepSpeed engine each).

    DDP compares each gradient's strides with its bucket's literally: a channels_last conv weight with one input
    channel (conv-small's first layer on grey images) has two stride sets for the same memory, so DDP warned on every
    CPU multi-process run that the layouts differ. The copy into the bucket is the same either way: not shown.
    """
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if accelerator.state.deepspeed_plugins is not None:
        return deepspeed_support.prepare_pair(accelerator, generator, critic, opt_g, opt_d)
    return accelerator.prepare(generator, critic, opt_g, opt_d)


def launch_precision(cfg: Config) -> str:
    """The mixed-precision mode of this launch: train.precision, else what `accelerate launch` was told."""
    return cfg.train.precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def raw_module(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (or a DeepSpeed engine), still carrying Accelerate's autocast forward."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def fp32_forward(model: nn.Module, x: Tensor) -> Tensor:
    """model(x) computed in float32 whatever the mixed-precision mode.

    Accelerate replaces a prepared model's `forward` attribute with an autocast-wrapped one, so an outer
    `torch.autocast(enabled=False)` does not help; calling the class's own `forward` bypasses that wrapper. Submodule
    hooks still run, and no DDP machinery is involved: gradients reach the parameters through the caller's single
    backward (which DDP all-reduces once).
    """
    module = raw_module(model)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return type(module).forward(module, x.float())


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of all parameters' bytes: equal on every process exactly when the replicas agree bit for bit."""
    digest = hashlib.sha256()
    for param in raw_module(model).parameters():
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
