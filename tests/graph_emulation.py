"""A CUDA graph's contract on the CPU, for tests: trainer.accel.cuda_graph's logic without a GPU.

EmulatedGraph records every operator run during capture (below autograd) and replays them in order on the same
tensors without rerunning Python, as a CUDA graph does, so a value frozen at capture shows up as a wrong result.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.accel.cuda_graph import CudaBackend

SYNCS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}
RANDOM = {"normal", "normal_", "uniform_", "randn", "rand", "randint", "randperm", "bernoulli", "bernoulli_"}


class Recorder(TorchDispatchMode):
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


class EmulatedGraph:
    """The operators seen at capture, replayed in order on the same tensors.

    Capture runs them (a real capture only records), so the replay just after the capture, which GraphedIteration
    always makes, is skipped: the pair does one step, as on a GPU. Python between the operators is not replayed, so
    a value frozen at capture (a float learning rate, a host-side count) stays frozen, exactly as in a real graph.
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
    """CPU stand-in for trainer.accel.cuda_graph.BACKEND."""

    device_type = "cpu"

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        yield

    def new_graph(self) -> EmulatedGraph:
        return EmulatedGraph()

    def capture(self, graph: EmulatedGraph):
        return Recorder(graph.ops)
