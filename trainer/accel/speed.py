"""Execution options: channels_last, torch.compile, Adam kernels, TF32, critic pass and backward; none changes math."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from trainer.errors import TrainerError

if TYPE_CHECKING:
    from trainer.config import Config

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


def compile_losses(cfg: Config) -> bool:
    """speed.compile with scope `loss`: each whole loss one compiled function (trainer.accel.compiled)."""
    return cfg.speed.compile and cfg.speed.compile_scope == "loss"


def compile_pair(generator: nn.Module, critic: nn.Module, backend: str = "inductor") -> None:
    """speed.compile_scope=modules: torch.compile of the generator and of the critic's ordinary calls, in place
    (state_dict keys unchanged).

    `Module.compile` replaces only `__call__`: the main critic pass and the generator step's critic call are compiled,
    while the penalty, which calls the class's own `forward` (trainer.accel.runtime.fp32_forward), stays eager, because
    aot_autograd refuses the double backward. `dynamic=False`: a few fixed batch sizes, one graph each.
    """
    generator.compile(backend=backend, dynamic=False)
    critic.compile(backend=backend, dynamic=False)


def apply_speed(cfg: Config, generator: nn.Module, critic: nn.Module, accelerator: Accelerator) -> None:
    """Applies cfg.speed's execution options to freshly built networks (before the optimizers and prepare)."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if cfg.speed.channels_last and deepspeed:
        raise TrainerError(
            "speed.channels_last=true cannot run under DeepSpeed: ZeRO flattens the weights, which needs them in the "
            "plain (NCHW) layout. Drop speed.channels_last, or train with DDP."
        )
    if channels_last(cfg, accelerator.device) and not deepspeed:
        to_channels_last(generator, critic)
    if cfg.speed.compile and not compile_losses(cfg):
        compile_pair(generator, critic, cfg.speed.compile_backend)
    set_tf32(cfg.speed.tf32)
    torch.backends.cudnn.benchmark = cfg.speed.cudnn_benchmark


def channels_last(cfg: Config, device: torch.device) -> bool:
    """speed.channels_last, or where it is unset the preset's measured choice: NHWC for conv-small on CPU only
    (never under DeepSpeed, whose ZeRO flattening needs the plain layout: apply_speed)."""
    if cfg.speed.channels_last is not None:
        return cfg.speed.channels_last
    from trainer.nets.models import PRESETS

    return device.type == "cpu" and PRESETS[cfg.model.name].channels_last_cpu


def joint_forward(cfg: Config, device: torch.device) -> bool:
    """speed.joint_forward, or where it is unset: one critic pass over real and fake together on GPUs (half the
    launches), two passes on CPUs (the 2n-row activations of one pass overflow the caches)."""
    if cfg.speed.joint_forward is not None:
        return cfg.speed.joint_forward
    return device.type != "cpu"


def adam_flags(cfg: Config, accelerator: Optional[Accelerator] = None) -> dict:
    """Keyword arguments selecting Adam's kernel: fused (one kernel for all tensors), or PyTorch's own (foreach).

    speed.fused_adam unset: fused on CUDA outside DeepSpeed (the same update to rounding; it also lets the non-finite
    guard skip an update on the device without waiting for it, see trainer.core.guard.NonFiniteGuard), PyTorch's on CPU.
    """
    fused = cfg.speed.fused_adam
    if fused is None:
        fused = (
            accelerator is not None
            and accelerator.device.type == "cuda"
            and accelerator.distributed_type != DistributedType.DEEPSPEED
        )
    return {"fused": True} if fused else {}


def critic_backward_kwargs(cfg: Config, accelerator: Accelerator, critic: nn.Module) -> dict:
    """`inputs=` the critic's parameters for the critic step's backward (speed.backward_params_only), or {}.

    The interpolates are a leaf that requires grad, so a plain backward also pushes the penalty's gradient down to
    them through the double-backward graph, work nobody reads; naming the parameters lets autograd skip it. Their
    gradients are the same. DeepSpeed's engine.backward takes no `inputs`, so there it is a plain backward.
    """
    if not cfg.speed.backward_params_only or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return {}
    return {"inputs": [q for q in critic.parameters() if q.requires_grad]}


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
