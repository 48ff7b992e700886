"""DeepSpeed ZeRO-1/2 for the generator and the critic: one Accelerate plugin and one engine per network.

Accelerate ties `accelerator.backward` to the first DeepSpeed engine it prepares; a GAN trains two. The loop's contract
stays as under DDP (`opt.zero_grad(); accelerator.backward(loss); opt.step()`): each optimizer's `zero_grad` names its
engine as the one the next `accelerator.backward` reaches, and its `step` steps that engine.

Precision: DeepSpeed's own `bf16`/`fp16` modes cast the weights, which would leave no float32 critic for the penalty.
Here the engines hold float32 weights and the forward runs under autocast, wrapped onto each module the way Accelerate
wraps a DDP model, so `trainer.accel.runtime.fp32_forward` bypasses it exactly as it does under DDP. The penalty runs
through the engine's module (`raw_module`): DeepSpeed 0.19's engine forward breaks `autograd.grad(create_graph=True)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, convert_outputs_to_fp32
from accelerate.utils.deepspeed import DeepSpeedOptimizerWrapper
from torch import nn

from trainer.config import Config

NETWORKS = ("generator", "critic")


@dataclass
class PairPlugin(DeepSpeedPlugin):
    """Accelerate's DeepSpeed plugin plus the autocast its network's forward runs under."""

    autocast: str = "no"  # no | bf16: the dtype module.forward autocasts to (the weights stay float32)


def requested(cfg: Config) -> Optional[str]:
    """This launch's DeepSpeed source: train.deepspeed, else what `accelerate launch` was given; None = no DeepSpeed."""
    if cfg.train.deepspeed:
        return str(cfg.train.deepspeed)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return config_file if config_file != "none" else os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")


def engine_config(source: str, batch_size: int) -> dict:
    """The DeepSpeed config of each engine: ZeRO stage `source` ("0", "1", "2") or the JSON file `source`, as the
    gate accepted it (trainer.core.gate.deepspeed_file)."""
    if source.strip().isdigit():
        config: dict = {"zero_optimization": {"stage": int(source)}}
    else:
        config = json.loads(Path(source).read_text())
    config.setdefault("zero_optimization", {})
    config.update(
        train_micro_batch_size_per_gpu=batch_size,
        gradient_accumulation_steps=1,
        zero_allow_untested_optimizer=True,  # plain torch.optim.Adam/RMSprop/SGD, partitioned by ZeRO
        fp16={"enabled": False},
        bf16={"enabled": False},
    )
    config.setdefault("gradient_clipping", 0.0)  # WGAN-GP clips nothing; Accelerate's `auto` would mean 1.0
    return config


def make_plugins(cfg: Config, precision: str) -> Optional[dict[str, PairPlugin]]:
    """One plugin per network (None without DeepSpeed); what the pair cannot do under ZeRO the gate refused
    (trainer.core.gate.deepspeed)."""
    source = requested(cfg)
    if source is None:
        return None
    # `accelerate launch` lists the fields its config file set; they are already folded into `source`, and Accelerate
    # would refuse a dict config next to them.
    os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    config = engine_config(source, cfg.train.batch_size)
    return {name: PairPlugin(hf_ds_config=json.loads(json.dumps(config)), autocast=precision) for name in NETWORKS}


def use_plain_gloo() -> None:
    """On CPU, DeepSpeed would JIT-compile (about 45 s) a shared-memory all-reduce; plain gloo does the job."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class EngineRouter:
    """Stands in for Accelerate's single engine reference: `accelerator.backward` reaches the engine chosen last."""

    def __init__(self, engines: list[nn.Module]) -> None:
        self.engines, self.target = engines, None

    @property
    def engine(self) -> nn.Module:  # what Accelerate's free_memory() destroys
        return self.engines[0]

    def backward(self, loss: torch.Tensor, sync_gradients: bool = True, **kwargs) -> None:
        if self.target is None:
            raise RuntimeError(
                "accelerator.backward under DeepSpeed needs the trained network's optimizer.zero_grad() first: it "
                "chooses which of the two engines runs the backward."
            )
        engine, self.target = self.target, None
        engine.backward(loss, **kwargs)

    def get_global_grad_norm(self) -> Optional[float]:
        norm = self.engine.get_global_grad_norm()
        return norm.item() if hasattr(norm, "item") else norm


class RoutedOptimizer(DeepSpeedOptimizerWrapper):
    """An engine's optimizer for the loop: zero_grad() aims accelerator.backward at its engine, step() steps it."""

    def __init__(self, optimizer: torch.optim.Optimizer, engine: nn.Module, router: EngineRouter) -> None:
        super().__init__(optimizer)
        self.engine, self.router = engine, router

    def zero_grad(self, set_to_none: Optional[bool] = None) -> None:
        self.engine.zero_grad()
        self.router.target = self.engine

    def step(self) -> None:
        self.engine.step()


def autocast_forward(module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Wraps module.forward in autocast with float32 outputs, as Accelerate does for a DDP model."""
    autocast = torch.autocast(device_type=device_type, dtype=dtype)
    module.forward = MethodType(convert_outputs_to_fp32(autocast(type(module).forward)), module)


def prepare_pair(
    accelerator: Accelerator,
    generator: nn.Module,
    critic: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    """Each network and its optimizer become a DeepSpeed engine under its own plugin; backward is routed per engine."""
    engines, optimizers = [], []
    for name, model, optimizer in zip(NETWORKS, (generator, critic), (opt_g, opt_d), strict=True):
        accelerator.state.select_deepspeed_plugin(name)
        accelerator.deepspeed_engine_wrapped = None  # each prepare() ties its engine; the router replaces both below
        engine, wrapped = accelerator.prepare(model, optimizer)
        if accelerator.state.deepspeed_plugins[name].autocast == "bf16":
            autocast_forward(engine.module, accelerator.device.type, torch.bfloat16)
        engines.append(engine)
        optimizers.append(wrapped.optimizer)
    router = EngineRouter(engines)
    accelerator.deepspeed_engine_wrapped = router
    (gen, crit), (og, od) = engines, [RoutedOptimizer(o, e, router) for o, e in zip(optimizers, engines, strict=True)]
    return gen, crit, og, od
