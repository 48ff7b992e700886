"""speed.cuda_graph: a whole generator iteration captured once as a CUDA graph and replayed every step.

At the paper's sizes (a 32x32 ResNet, batch 64) a GPU step is bound by the CPU launching kernels: the five critic
steps with the penalty's double backward, the generator step and both Adam updates are some 3,000 small launches.
A graph replays all of them with one launch (README: Performance).

A pure wrapper around any `run(inputs) -> statistics` (the loop gives it trainer.core.step.iteration on its
state): the same function, fed from fixed buffers (StaticFeed, filled
eagerly in the eager draw order from the same streams before each replay), whose returned statistics are the
graph's output tensors, rewritten by each replay. What stays outside the graph: the learning-rate schedule (written
into device tensors the fused Adam kernels read), the EMA update and the statistics (the loop does them after
either path). The non-finite guard's device counts are updated in place, so the graph keeps counting.

Under DDP (several processes, or one NCCL process), the same wrapper captures DDP's gradient all-reduces too,
following PyTorch's recipe for DDP + CUDA graphs: NCCL >= 2.9.6, NCCL's asynchronous error handling off before the
process group starts and DDP's static graph (both set by trainer.accel.runtime.make_accelerator when
speed.cuda_graph is on), and at least 11 DDP iterations run eagerly on a side stream before the capture (DDP's
reducer rebuilds its buckets and logs with host syncs during its first iterations).

Requirements, checked before any GPU work (trainer.config) and at start-up (`check_runtime`): CUDA, bf16 or fp32
(fp16's GradScaler reads its verdict on the host), Adam with its fused kernel, no lazy penalty, no DeepSpeed; with
speed.compile, any backend but `cudagraphs` (whose own graphs cannot be captured inside this one).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from trainer.errors import TrainerError


class StaticFeed:
    """A generator iteration's inputs in fixed device buffers, drawn eagerly before each replay of a CUDA graph.

    `fill` draws them with the eager step's own draws (trainer.core.inputs.Draws: per critic step the batch and its
    labels, z, eps; then the generator's z and labels), so a graphed run sees the same data and noise as an eager
    one. `critic()` and `generator()` hand them out in that order, as `Draws` does.
    """

    def __init__(self, draws, real_shape: tuple[int, ...]) -> None:
        n, k, device = draws.batch, draws.n_critic, draws.device
        self.draws, self.n_critic, self.cursor = draws, k, 0
        self.real = torch.empty((k, n, *real_shape), device=device)
        self.z = torch.empty(k, n, draws.z_dim, device=device)
        self.eps = torch.empty(k, n, device=device)
        self.z_g = torch.empty(draws.batch_g, draws.z_dim, device=device)
        conditional = draws.num_classes > 0
        self.labels = torch.empty(k, n, dtype=torch.long, device=device) if conditional else None
        self.labels_g = torch.empty(draws.batch_g, dtype=torch.long, device=device) if conditional else None

    def fill(self) -> None:
        for i in range(self.n_critic):
            real, labels, z, eps = self.draws.critic()
            self.real[i].copy_(real)
            self.z[i].copy_(z)
            self.eps[i].copy_(eps)
            if self.labels is not None:
                self.labels[i].copy_(labels)
        z_g, labels_g = self.draws.generator()
        self.z_g.copy_(z_g)
        if self.labels_g is not None:
            self.labels_g.copy_(labels_g)
        self.cursor = 0

    def critic(self) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
        i, self.cursor = self.cursor, self.cursor + 1
        return self.real[i], None if self.labels is None else self.labels[i], self.z[i], self.eps[i]

    def generator(self) -> tuple[Tensor, Optional[Tensor]]:
        return self.z_g, self.labels_g


class CudaBackend:
    """The CUDA calls GraphedIteration makes (tests swap in a CPU emulation of a graph: tests/graph_emulation.py)."""

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


BACKEND = CudaBackend()


WARMUP = 3  # eager steps before the capture: lazy optimizer state, cuDNN plans, autocast
DDP_WARMUP = 11  # PyTorch's DDP + CUDA graphs recipe: at least 11 DDP iterations before the capture
NCCL_MIN = (2, 9, 6)  # the first NCCL that supports CUDA graph capture of its collectives
ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"


def ddp_modules(modules: tuple[nn.Module, ...]) -> list[DistributedDataParallel]:
    return [m for m in modules if isinstance(m, DistributedDataParallel)]


def check_runtime(device: torch.device | str, ddp: list[DistributedDataParallel]) -> None:
    """The run can be captured: a CUDA device and, under DDP, the recipe's NCCL, error handling and static graph."""
    device = torch.device(device)
    if device.type != BACKEND.device_type:
        raise TrainerError(
            f"speed.cuda_graph=true needs a CUDA GPU, but this run is on {device.type}. "
            f"Drop speed.cuda_graph (it only removes GPU launch overhead)."
        )
    if not ddp:
        return
    if device.type == "cuda" and torch.cuda.nccl.version() < NCCL_MIN:
        found = ".".join(map(str, torch.cuda.nccl.version()))
        raise TrainerError(
            f"speed.cuda_graph=true under DDP needs NCCL >= 2.9.6 (to capture its all-reduces); this PyTorch has NCCL "
            f"{found}. Install a newer PyTorch, or drop speed.cuda_graph for multi-GPU runs."
        )
    if os.environ.get(ASYNC_ERROR_HANDLING) != "0":
        raise TrainerError(
            f"speed.cuda_graph=true under DDP needs {ASYNC_ERROR_HANDLING}=0 before the process group starts; "
            f"here it is {os.environ.get(ASYNC_ERROR_HANDLING)!r}. Start the run through "
            f"trainer.accel.runtime.make_accelerator (train.py does: it sets the variable first), or drop "
            f"speed.cuda_graph."
        )
    if not all(m.static_graph for m in ddp):
        raise TrainerError(
            "speed.cuda_graph=true under DDP needs DDP's static graph (DistributedDataParallelKwargs("
            "static_graph=True), which trainer.accel.runtime.make_accelerator passes); these modules were wrapped "
            "without it. Build the run with trainer.core.build, or drop speed.cuda_graph."
        )


class GraphedIteration:
    """`run(feed)` run eagerly `warmup` times, then captured once and replayed; returns its statistics.

    `modules`: the prepared networks the step runs; if any is DDP, the warm-up is DDP's (DDP_WARMUP).
    """

    def __init__(
        self,
        run: Callable[[StaticFeed], list],
        inputs,
        sample_shape: tuple[int, ...],
        optimizers: tuple[torch.optim.Optimizer, ...],
        modules: tuple[nn.Module, ...] = (),
    ) -> None:
        ddp = ddp_modules(modules)
        check_runtime(inputs.device, ddp)
        warmup = DDP_WARMUP if ddp else WARMUP
        self.run, self.optimizers, self.device = run, optimizers, inputs.device
        self.feed = StaticFeed(inputs, sample_shape)
        self.warmup, self.eager_done, self.graph, self.failed = warmup, 0, None, False
        self.outputs: list = []
        self.lr: dict[tuple[int, int], Tensor] = {}
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["capturable"] = True  # fused Adam keeps its step counts on the device already

    def __call__(self) -> list:
        self._lr_to_device()
        self.feed.fill()
        if self.failed or (self.graph is None and self.eager_done < self.warmup):
            return self._warm()
        if self.graph is None and not self._try_capture():
            return self._warm()  # the same step, eagerly
        self.graph.replay()  # just after a capture, which ran no kernels, this replay is that step
        return self.outputs

    def _lr_to_device(self) -> None:
        """The schedule's rates for this step, written into the device tensors the captured Adam kernels read."""
        for i, optimizer in enumerate(self.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                rate = float(group["lr"])
                if (i, j) not in self.lr:
                    self.lr[(i, j)] = torch.tensor(rate, device=self.device)
                else:
                    self.lr[(i, j)].fill_(rate)
                group["lr"] = self.lr[(i, j)]

    def _warm(self) -> list:
        """An ordinary eager step on a side stream, as PyTorch asks before capture (lazy state, cuDNN plans)."""
        with BACKEND.side_stream():
            records = self.run(self.feed)
        self.eager_done += 1
        return records

    def _try_capture(self) -> bool:
        """Captures the step; if the capture fails (a driver or an operator that cannot be captured), says so once
        and the run goes on eagerly with the same math: a capture runs no kernels, so nothing was half done."""
        try:
            self._capture(lambda: self.run(self.feed))
            return True
        except RuntimeError as err:
            self.failed, self.feed.cursor = True, 0  # the eager retry reads the buffers again
            print(
                f"[wgan-gp] warning: speed.cuda_graph: the capture failed ({str(err).splitlines()[0][:200]}); "
                f"this run goes on without the graph (same math, slower).",
                flush=True,
            )
            return False

    def _capture(self, step: Callable[[], list]) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's own pool
        graph = BACKEND.new_graph()
        with BACKEND.capture(graph):
            self.outputs = step()
        self.graph = graph
