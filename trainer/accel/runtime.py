"""Accelerate setup, rank hygiene and the fp32 forward used by the gradient penalty."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
import warnings
from datetime import timedelta
from typing import Optional

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
    elastic_process_group(elastic_backend(cpu, init.backend if plugins is not None else None), init.timeout)
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


ELASTIC_STORE_KEY = "wgan_gp/process_group_store"  # in torchrun's agent store: "PORT NONCE" of this launch's store


def elastic_backend(cpu: bool, deepspeed_backend: Optional[str]) -> Optional[str]:
    """The backend Accelerate would start (gloo on CPU, NCCL on CUDA), or None where it picks another (MPI, XPU...)."""
    if cpu:
        return None if torch.distributed.is_mpi_available() else "gloo"
    if deepspeed_backend is not None:
        return deepspeed_backend
    return "nccl" if torch.cuda.is_available() else None


def elastic_process_group(backend: Optional[str], timeout: timedelta) -> None:
    """Starts the process group under torchrun on a store of this launch's own, so a restarted group can form.

    torchrun's agent hosts one TCPStore for the whole job and exports it (TORCHELASTIC_USE_AGENT_STORE=True,
    MASTER_ADDR:MASTER_PORT); torch's env:// rendezvous uses it as is, without a per-attempt prefix. After
    `--max-restarts` restarts the workers, the keys the previous workers wrote (gloo's listening addresses, NCCL's
    unique id) are still there under the same names, and a restarted rank that reads its peer's key before the peer
    rewrites it connects to a dead process: `Gloo connectFullMesh failed ... Connection refused` (measured: 3 keys
    left before the new group's first write). TORCHELASTIC_RESTART_COUNT cannot tell the attempts apart either: each
    node's agent counts only its own failures. So rank 0 hosts a fresh TCPStore for each start and publishes its port
    and a random nonce in the agent's store; the other ranks connect to it and check the nonce. A stale entry points
    to a store that died with its process (connection refused) or carries an old nonce: read it again until rank 0
    of this attempt has written its own. Outside torchrun's agent (python, srun, static env://) this does nothing.
    """
    if (
        backend is None
        or torch.distributed.is_initialized()
        or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        or int(os.environ.get("WORLD_SIZE", "1")) < 2
    ):
        return
    from torch.distributed import TCPStore

    host, rank, world = os.environ["MASTER_ADDR"], int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    if rank == 0:
        store = TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        nonce = secrets.token_hex(16)
        store.set("nonce", nonce)
        # rank 0 may run on another node than torchrun's store (c10d rendezvous): publish the address it is reached at
        agent.set(ELASTIC_STORE_KEY, f"{_own_address(host, int(os.environ['MASTER_PORT']))} {store.port} {nonce}")
    else:
        store = _join_launch_store(agent, timeout)
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def leave_process_group() -> None:
    """Destroys the default process group once every process finished its run (or stopped after a checkpoint), as
    NCCL asks (pytorch/pytorch#190489). Not after a failure, where another process may still be inside a collective.
    It does not stop gloo's worker threads (DDP keeps the group alive): trainer.accel.shutdown.exit_process is what
    ends a job's process safely."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _own_address(host: str, port: int) -> str:
    """This machine's address on the route to torchrun's store (no packet is sent: a UDP socket only picks a route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return probe.getsockname()[0]
    except OSError:
        return host


def _join_launch_store(agent, timeout: timedelta):
    """The store rank 0 of this attempt published (see elastic_process_group); raises after `timeout`."""
    from torch.distributed import TCPStore

    deadline = time.monotonic() + timeout.total_seconds()
    probe = min(5.0, timeout.total_seconds())
    while True:
        host, port, nonce = agent.get(ELASTIC_STORE_KEY).decode().split()  # waits for the first one to be written
        try:
            # A plain connect first: a store that died with its process refuses at once and silently, where
            # TCPStore's client retries for its whole timeout and prints C++ stack traces.
            socket.create_connection((host, int(port)), timeout=probe).close()
            store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=probe))
            if store.get("nonce").decode() == nonce:
                return store
        except (OSError, RuntimeError, ValueError):  # refused, or not this attempt's store (DistError: RuntimeError)
            pass
        if time.monotonic() > deadline:
            raise torch.distributed.DistError(
                f"Timed out: rank 0 did not publish this attempt's process-group store in {ELASTIC_STORE_KEY} on "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} in {timeout.total_seconds():.0f} s"
            )
        time.sleep(0.2)


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
