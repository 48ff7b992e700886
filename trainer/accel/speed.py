"""The mechanics of the execution options (trainer.accel.plan decides them): NHWC weights, module compile, CUDA's
float32 modes, cuDNN's autotuner; none changes the math."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from trainer.accel.plan import ExecutionPlan

CONV_LAYERS = (nn.Conv2d, nn.ConvTranspose2d)


def has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, CONV_LAYERS) for m in module.modules())


def to_channels_last(*modules: nn.Module) -> None:
    """NHWC weights for conv networks (in place, the same Parameter objects); MLPs are left alone.

    Convolutions follow their weight's layout, so activations and gradients become NHWC from the first conv on.
    """
    for module in modules:
        if has_conv(module):
            module.to(memory_format=torch.channels_last)


def compile_pair(generator: nn.Module, critic: nn.Module, backend: str = "inductor") -> None:
    """speed.compile_scope=modules: torch.compile of the generator and of the critic's ordinary calls, in place
    (state_dict keys unchanged).

    `Module.compile` replaces only `__call__`: the main critic pass and the generator step's critic call are compiled,
    while the penalty, which calls the class's own `forward` (trainer.accel.runtime.fp32_forward), stays eager, because
    aot_autograd refuses the double backward. `dynamic=False`: a few fixed batch sizes, one graph each.
    """
    generator.compile(backend=backend, dynamic=False)
    critic.compile(backend=backend, dynamic=False)


def apply_plan(plan: ExecutionPlan, generator: nn.Module, critic: nn.Module) -> None:
    """The plan's options on freshly built networks (before the optimizers and prepare): layout, module compile,
    CUDA's float32 modes, cuDNN's autotuner."""
    if plan.channels_last:
        to_channels_last(generator, critic)
    if plan.compile == "modules":
        compile_pair(generator, critic, plan.compile_backend)
    set_tf32(plan.tf32)
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark


PYTORCH_FP32_MODES = ("none", "tf32")  # PyTorch's defaults: matmuls in IEEE float32, cuDNN convolutions in TF32


def set_tf32(allowed: Optional[bool]) -> tuple[str, str]:
    """CUDA's float32 modes for (matmuls, cuDNN convolutions); returns the previous ones. None: PyTorch's own (what a
    plain PyTorch loop gets: TF32 convolutions); True: TF32 for both; False: IEEE float32 for both.

    Under bf16/fp16 the only float32 work is the penalty pass (forward and double backward, on float32 tensors with
    float32 accumulation either way); with precision `no` it is every pass.
    """
    previous = tf32_modes()
    modes = PYTORCH_FP32_MODES if allowed is None else ("tf32", "tf32") if allowed else ("ieee", "ieee")
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = modes
    return previous


def tf32_modes() -> tuple[str, str]:
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


@contextmanager
def float32_modes(modes: tuple[str, str]) -> Iterator[None]:
    """Runs the block with the given (matmul, conv) float32 precision modes, then restores the current ones."""
    previous = tf32_modes()
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = modes
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = previous


@contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Runs the block with torch.backends.cudnn.benchmark set as given, then restores it."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
