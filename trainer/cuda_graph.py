"""speed.cuda_graph: a whole generator iteration captured once as a CUDA graph and replayed every step.

At the paper's sizes (a 32x32 ResNet, batch 64) a GPU step is bound by the CPU launching kernels: the five critic
steps with the penalty's double backward, the generator step and both Adam updates are some 3,000 small launches.
A graph replays all of them with one launch: on an H100, resnet32 in bf16 with the penalty in TF32 went from 113 ms
per step eager to 60 ms graphed (README: Performance).
The math is the eager step's: the same kernels, fed the same batches and noise (StaticFeed draws them
eagerly, in the eager order, into fixed buffers before each replay), the penalty still in fp32 with its double
backward. What stays outside the graph: the learning-rate schedule (written into device tensors the fused Adam
kernels read), the EMA update, the statistics and the non-finite guard's counts (fed from the graph's outputs).

Requirements, checked before any GPU work (trainer.config) and at start-up (`check_runtime`): one CUDA process, bf16
or fp32 (fp16's GradScaler reads its verdict on the host), Adam with its fused kernel, an unconditional model, no
lazy penalty, no torch.compile, no DeepSpeed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.data import DATASETS
from trainer.errors import TrainerError
from trainer.runtime import raw_module
from trainer.steps import Parts, critic_inputs, generator_noise


class StaticFeed:
    """A generator iteration's inputs in fixed device buffers, drawn eagerly before each replay of a CUDA graph.

    `fill` draws them in exactly the order the eager step does (per critic step: batch, z, eps; then the generator's
    z), from the same streams, so a graphed run sees the same data and noise as an eager one.
    """

    def __init__(self, p: Parts) -> None:
        cfg, device, n = p.cfg, p.accelerator.device, p.cfg.train.batch_size
        spec = DATASETS[cfg.data.name]
        shape = (2,) if spec.is_toy else (spec.channels, cfg.data.image_size, cfg.data.image_size)
        self.real = torch.empty((cfg.train.n_critic, n, *shape), device=device)
        self.z = torch.empty(cfg.train.n_critic, n, cfg.model.z_dim, device=device)
        self.eps = torch.empty(cfg.train.n_critic, n, device=device)
        self.z_g = torch.empty(cfg.train.batch_size_g or n, cfg.model.z_dim, device=device)
        self.cursor = 0

    def fill(self, p: Parts) -> None:
        for i in range(p.cfg.train.n_critic):  # the eager step's own draws, in its order
            real, _, z, eps = critic_inputs(p)
            self.real[i].copy_(real)
            self.z[i].copy_(z)
            self.eps[i].copy_(eps)
        self.z_g.copy_(generator_noise(p))
        self.cursor = 0

    def critic(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, self.cursor = self.cursor, self.cursor + 1
        return self.real[i], self.z[i], self.eps[i]


class RecordingStats:
    """Stands in for trainer.stats.Stats during capture: keeps the reported tensors, which each replay rewrites."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, torch.Tensor]] = []

    def report(self, name: str, value: torch.Tensor) -> None:
        self.calls.append(("report", name, torch.as_tensor(value).detach()))

    def report_spread(self, name: str, values: torch.Tensor) -> None:
        self.calls.append(("report_spread", name, values.detach()))

    def replay_into(self, stats) -> None:
        for kind, name, value in self.calls:
            getattr(stats, kind)(name, value)


class CudaBackend:
    """The CUDA calls GraphedStep makes (tests/test_graph_semantics.py swaps in a CPU emulation of a graph)."""

    device_type = "cuda"

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        """Eager warm-up steps run on a side stream, as PyTorch's CUDA-graph recipe asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def new_graph(self):
        return torch.cuda.CUDAGraph()

    def capture(self, graph):
        return torch.cuda.graph(graph)


class _Recorder(TorchDispatchMode):
    """Runs and records every operator below autograd; refuses what a CUDA graph capture cannot hold."""

    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        if name.split("::")[-1].split(".")[0] in SYNCS | RANDOM:
            raise RuntimeError(f"{name} inside a CUDA-graph capture: a host sync or a random draw cannot be replayed")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


SYNCS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}
RANDOM = {"normal", "normal_", "uniform_", "randn", "rand", "randint", "randperm", "bernoulli", "bernoulli_"}


class EmulatedGraph:
    """A CUDA graph's contract on the CPU: the operators seen at capture, replayed in order on the same tensors.

    Capture runs them (a real capture only records), so the replay just after the capture, which GraphedStep always
    makes, is skipped: the pair does one step, as on a GPU. Python between the operators is not replayed, so a value
    frozen at capture (a float learning rate, a host-side count) stays frozen, exactly as in a real graph.
    """

    def __init__(self) -> None:
        self.ops: list = []
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        if self.replays == 1:
            return
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                _copy_into(out, func(*args, **kwargs))


def _copy_into(out, new) -> None:
    if isinstance(out, torch.Tensor) and isinstance(new, torch.Tensor):
        if out is not new:
            out.copy_(new)
    elif isinstance(out, (list, tuple)):
        for o, n in zip(out, new, strict=True):
            _copy_into(o, n)


class EmulatedBackend(CudaBackend):
    """CPU stand-in for tests (WGAN_GP_EMULATE_CUDA_GRAPH=1): GraphedStep's logic without a GPU."""

    device_type = "cpu"

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        yield

    def new_graph(self) -> EmulatedGraph:
        return EmulatedGraph()

    def capture(self, graph: EmulatedGraph):
        return _Recorder(graph.ops)


BACKEND = EmulatedBackend() if os.environ.get("WGAN_GP_EMULATE_CUDA_GRAPH") == "1" else CudaBackend()


def check_runtime(p: Parts) -> None:
    accelerator = p.accelerator
    if accelerator.device.type != BACKEND.device_type:
        raise TrainerError(
            f"speed.cuda_graph=true needs a CUDA GPU, but this run is on {accelerator.device.type}. "
            f"Drop speed.cuda_graph (it only removes GPU launch overhead)."
        )
    if accelerator.num_processes > 1:
        raise TrainerError(
            f"speed.cuda_graph=true runs on one process; this launch has {accelerator.num_processes}. "
            f"Use it on a single GPU, or drop it for DDP runs."
        )


class GraphedStep:
    """Runs `iteration(p)` (n_critic critic steps and a generator step) eagerly `warmup` times, then captures it."""

    def __init__(self, p: Parts, warmup: int = 3) -> None:
        check_runtime(p)
        self.warmup, self.eager_done, self.graph, self.failed = warmup, 0, None, False
        self.feed = StaticFeed(p)
        self.recorder = RecordingStats()
        self.flags: list = []
        self.lr: dict[tuple[int, int], torch.Tensor] = {}
        for optimizer in (p.opt_d, p.opt_g):
            for group in optimizer.param_groups:
                group["capturable"] = True  # fused Adam keeps its step counts on the device already

    def _lr_to_device(self, p: Parts) -> None:
        """The schedule's rates for this step, written into the device tensors the captured Adam kernels read."""
        for i, optimizer in enumerate((p.opt_d, p.opt_g)):
            for j, group in enumerate(optimizer.param_groups):
                rate = float(group["lr"])
                if (i, j) not in self.lr:
                    self.lr[(i, j)] = torch.tensor(rate, device=p.accelerator.device)
                else:
                    self.lr[(i, j)].fill_(rate)
                group["lr"] = self.lr[(i, j)]

    def run(self, p: Parts, iteration: Callable[[Parts], None]) -> None:
        self._lr_to_device(p)
        self.feed.fill(p)
        p.feed = self.feed
        try:
            if self.failed or (self.graph is None and self.eager_done < self.warmup):
                self._warm(p, iteration)
            elif self.graph is None:
                if self._try_capture(p, iteration):
                    self._replay(p, count_critic_steps=False)  # the capture ran no kernels: this replay is the step
                else:
                    self._warm(p, iteration)  # the same step, eagerly
            else:
                self._replay(p, count_critic_steps=True)
        finally:
            p.feed = None

    def _try_capture(self, p: Parts, iteration: Callable[[Parts], None]) -> bool:
        """Captures the step; if the capture fails (a driver or an operator that cannot be captured), says so once
        and the run goes on eagerly with the same math: a capture runs no kernels, so nothing was half done."""
        critic_steps = p.critic_steps
        try:
            self._capture(p, iteration)
            return True
        except RuntimeError as err:
            p.critic_steps, self.failed, self.feed.cursor = critic_steps, True, 0  # the eager retry reads it again
            raw_module(p.critic).requires_grad_(True)  # a failure inside the generator step left it frozen
            if p.accelerator.is_main_process:
                print(
                    f"[wgan-gp] warning: speed.cuda_graph: the capture failed ({str(err).splitlines()[0][:200]}); "
                    f"this run goes on without the graph (same math, slower).",
                    flush=True,
                )
            return False

    def _warm(self, p: Parts, iteration: Callable[[Parts], None]) -> None:
        """An ordinary eager step on a side stream, as PyTorch asks before capture (lazy state, cuDNN plans)."""
        with BACKEND.side_stream():
            iteration(p)
        self.eager_done += 1

    def _capture(self, p: Parts, iteration: Callable[[Parts], None]) -> None:
        stats, ema = p.stats, p.ema
        p.stats, p.ema, p.guard.deferred = self.recorder, None, []  # type: ignore[assignment]
        for optimizer in (p.opt_d, p.opt_g):
            optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's own pool
        graph = BACKEND.new_graph()
        try:
            with BACKEND.capture(graph):
                iteration(p)
        finally:
            p.stats, p.ema = stats, ema
            self.flags, p.guard.deferred = p.guard.deferred or [], None
        self.graph = graph

    def _replay(self, p: Parts, count_critic_steps: bool) -> None:
        assert self.graph is not None
        self.graph.replay()
        if count_critic_steps:
            p.critic_steps += p.cfg.train.n_critic  # the capture counted its own step's
        self.recorder.replay_into(p.stats)
        for key, flag in self.flags:
            p.guard.count_on_device(key, flag)
        if p.ema is not None:
            p.ema.update(raw_module(p.generator))
