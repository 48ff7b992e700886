"""The execution plan: how a run executes (layout, critic pass, Adam kernel, backward, compile, graph, threads,
precision), resolved once from speed.* and the launch into one frozen object. None of it changes the math.

The builder reads it (trainer.core.build), the start-up line prints `describe()`, `config.yaml` carries it as a
comment and the tracker's config under `execution`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

if TYPE_CHECKING:
    from trainer.config import Config


@dataclass(frozen=True)
class ExecutionPlan:
    device: str  # cpu | cuda | ...
    processes: int
    precision: str  # no | bf16 | fp16: the main passes (the penalty is float32 in every plan)
    threads: int  # torch threads per process on CPU; 0 on accelerators
    omp_wait: str  # OMP_WAIT_POLICY: PASSIVE (train.py's default: idle threads sleep) or what the environment said
    deepspeed: bool  # one DeepSpeed engine per network (else DDP, or one process)
    channels_last: bool  # NHWC weights for the conv presets
    joint_forward: bool  # one critic pass over cat(real, fake) (else two)
    fused_adam: bool  # Adam's fused kernel (else PyTorch's own)
    backward_params_only: bool  # the critic's backward stops at its weights (else a plain backward)
    compile: Optional[str]  # torch.compile scope: loss | modules; None = eager
    compile_backend: str
    cuda_graph: bool  # one CUDA graph per generator step
    tf32: Optional[bool]  # CUDA float32 modes: None = PyTorch's own, True TF32, False IEEE
    cudnn_benchmark: bool

    def describe(self) -> str:
        """One line for the start-up log."""
        on = lambda flag: "on" if flag else "off"  # noqa: E731
        compiled = f"{self.compile} ({self.compile_backend})" if self.compile else "off"
        tf32 = {None: "PyTorch's default", True: "on", False: "off"}[self.tf32]
        threads = f", {self.threads} threads (OpenMP waits {self.omp_wait.lower()})" if self.threads else ""
        return (
            f"execution: {self.device} x{self.processes}{threads}, precision {self.precision}"
            f"{', DeepSpeed' if self.deepspeed else ''}; channels_last {on(self.channels_last)}, critic pass "
            f"{'joint' if self.joint_forward else 'two'}, Adam {'fused' if self.fused_adam else 'foreach'}, backward "
            f"{'to weights' if self.backward_params_only else 'plain'}, compile {compiled}, CUDA graph "
            f"{on(self.cuda_graph)}, TF32 {tf32}, cudnn.benchmark {on(self.cudnn_benchmark)}"
        )

    def comment(self) -> str:
        """The plan as YAML comment lines after the config it ran (config.yaml, every checkpoint's copy): decided
        by the launch and the machine, not by keys a resume could restore, so it is read by people, not parsed."""
        return f"# {self.describe()}\n"

    def as_dict(self) -> dict:
        return asdict(self)


def channels_last(cfg: Config, device: torch.device) -> bool:
    """speed.channels_last, or where it is unset the preset's measured choice: NHWC for conv-small on CPU only
    (never under DeepSpeed, whose ZeRO flattening needs the plain layout; set to true there, the gate refuses it)."""
    if cfg.speed.channels_last is not None:
        return cfg.speed.channels_last
    from trainer.nets.models import PRESETS

    return device.type == "cpu" and PRESETS[cfg.model.name].channels_last_cpu


def resolve(cfg: Config, accelerator: Optional[Accelerator]) -> ExecutionPlan:
    """The plan of this launch. Unset options take the measured defaults: one critic pass over real and fake on GPUs
    (half the launches), two on CPUs (the 2n-row activations of one pass overflow the caches); Adam's fused kernel on
    CUDA outside DeepSpeed (the same update to rounding, and the non-finite guard skips on the device: see
    trainer.core.guard); the critic's backward to its weights only (the interpolates are a leaf that requires grad, so a
    plain backward also pushes the penalty's gradient into them, work nobody reads), except under DeepSpeed, whose
    engine.backward takes no `inputs`. Without an accelerator (tools that build a pair to inspect it): the CPU."""
    s = cfg.speed
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    deepspeed = accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED
    fused = s.fused_adam if s.fused_adam is not None else (device.type == "cuda" and not deepspeed)
    return ExecutionPlan(
        device=device.type,
        processes=accelerator.num_processes if accelerator is not None else 1,
        precision=accelerator.mixed_precision if accelerator is not None else (cfg.train.precision or "no"),
        threads=torch.get_num_threads() if device.type == "cpu" else 0,
        omp_wait=os.environ.get("OMP_WAIT_POLICY", "") or "unset",
        deepspeed=deepspeed,
        channels_last=channels_last(cfg, device) and not deepspeed,
        joint_forward=s.joint_forward if s.joint_forward is not None else device.type != "cpu",
        fused_adam=bool(fused),
        backward_params_only=s.backward_params_only and not deepspeed,
        compile=s.compile_scope if s.compile else None,
        compile_backend=s.compile_backend,
        cuda_graph=s.cuda_graph,
        tf32=s.tf32,
        cudnn_benchmark=s.cudnn_benchmark,
    )
