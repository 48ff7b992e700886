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
    """Runs and records every operator below autograd; refuses what a CUDA graph capture cannot hold.

    A host read (`.item()`) is refused when its tensor is in the graph's data flow (an operand or result of a
    non-view operator recorded so far): on a GPU that is a device tensor, and reading it inside a capture fails. A
    tensor the graph never touches is host state, as DDP's reducer keeps its map of used parameters in host memory
    (pinned, read with `.item()` in every backward under its static graph), which a real capture allows.
    """

    def __init__(self, ops: list, drop_collectives: bool = False) -> None:
        super().__init__()
        self.ops, self.seen, self.drop_collectives = ops, set(), drop_collectives

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name().split("::")[-1].split(".")[0]
        if name in RANDOM or (name in SYNCS and any(_storage(t) in self.seen for t in _tensors(args))):
            raise RuntimeError(
                f"{func.name()} inside a CUDA-graph capture: a host sync or a random draw cannot be replayed"
            )
        out = func(*args, **kwargs)
        if name in SYNCS:
            return out  # host state: runs now, not part of the graph
        if self.drop_collectives and func.namespace == "c10d":
            return out  # the control: a graph without the all-reduces
        self.ops.append((func, args, kwargs, out))
        if not func.is_view:  # a view reads no data
            self.seen.update(_storage(t) for t in (*_tensors(args), *_tensors(kwargs.values()), *_tensors([out])))
        return out


def _tensors(values) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensors(value))
    return found


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


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
                new = func(*args, **kwargs)
                _wait(new)  # a collective (DDP's all-reduce) is ordered before the next operator, as on a stream
                _copy_into(out, new)


def _wait(result) -> None:
    if isinstance(result, (list, tuple)):
        for item in result:
            _wait(item)
    elif not isinstance(result, torch.Tensor) and hasattr(result, "wait"):
        result.wait()


def _copy_into(out, new) -> None:
    if isinstance(out, torch.Tensor) and isinstance(new, torch.Tensor):
        if out is not new:
            out.copy_(new)
    elif isinstance(out, (list, tuple)):
        for o, n in zip(out, new, strict=True):
            _copy_into(o, n)


class EmulatedBackend(CudaBackend):
    """CPU stand-in for trainer.accel.cuda_graph.BACKEND; `drop_collectives`: a control that records no collective."""

    device_type = "cpu"

    def __init__(self, drop_collectives: bool = False) -> None:
        self.drop_collectives, self.graphs = drop_collectives, []

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        yield

    def new_graph(self) -> EmulatedGraph:
        self.graphs.append(EmulatedGraph())
        return self.graphs[-1]

    def capture(self, graph: EmulatedGraph):
        return Recorder(graph.ops, self.drop_collectives)

    def replays(self) -> int:
        """Replays that ran the recorded operators (the one just after each capture is the capture's own step)."""
        return sum(max(0, graph.replays - 1) for graph in self.graphs)
