"""The gate's concerns of how a run executes: torch.compile's scope, speed.cuda_graph's requirements, and what the
network pair cannot do under DeepSpeed (its JSON file judged too)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.config import Config
from trainer.core.gate.training import optimizer, relativistic
from trainer.errors import TrainerError


def compile_options(cfg: Config) -> None:
    """speed.compile's scope under DeepSpeed."""
    from trainer.accel import zero

    if cfg.speed.compile and cfg.speed.compile_scope == "loss" and zero.requested(cfg) is not None:
        raise TrainerError(
            "speed.compile=true compiles each whole loss, which under DeepSpeed traces into the engines' forward: "
            "their step counters change every step and recompile it until torch.compile gives up. Under DeepSpeed use "
            "speed.compile_scope=modules (G and the critic's calls compiled, the penalty eager), or train with DDP."
        )


def cuda_graph(cfg: Config) -> None:
    """speed.cuda_graph's requirements (trainer.accel.cuda_graph), refused with the way out before any GPU work."""
    s, t = cfg.speed, cfg.train
    if not s.cuda_graph:
        return
    if s.compile and s.compile_backend == "cudagraphs" and getattr(cfg, "_launcher_backend", False):
        raise TrainerError(
            "--dynamo_backend cudagraphs cannot run with speed.cuda_graph=true (its own CUDA graphs cannot be captured "
            "inside this one). Use --dynamo_backend inductor, or drop speed.cuda_graph."
        )
    conflicts = [
        (t.precision == "fp16", "train.precision=fp16 (the GradScaler reads its overflow verdict on the host)", "bf16"),
        (s.fused_adam is False, "speed.fused_adam=false (the graph needs Adam's fused kernel)", "drop that override"),
        (cfg.loss.lazy_penalty > 1, "loss.lazy_penalty>1 (a graph replays one fixed step)", "loss.lazy_penalty=1"),
        (
            s.compile and s.compile_backend == "cudagraphs",
            "speed.compile_backend=cudagraphs (its own CUDA graphs cannot be captured inside this one)",
            "speed.compile_backend=inductor",
        ),
        (t.deepspeed is not None, "train.deepspeed (DeepSpeed's engines are not captured)", "DDP or one GPU"),
        (
            relativistic(cfg),
            f"loss.name={cfg.loss.name} (its generator step's paired real batch is not among the graph's inputs)",
            "loss.name=gan-r1",
        ),
        (
            optimizer(cfg) != "adam",
            f"optim.name={optimizer(cfg)} (the graph needs Adam's fused kernel)",
            "optim.name=adam",
        ),
    ]
    for bad, what, fix in conflicts:
        if bad:
            raise TrainerError(f"speed.cuda_graph=true cannot run with {what}. Use {fix}, or drop speed.cuda_graph.")


def deepspeed(cfg: Config) -> None:
    """What the network pair cannot do under ZeRO (train.deepspeed, or `accelerate launch --use_deepspeed`)."""
    from trainer.accel import zero
    from trainer.core.losses import LOSSES

    source = zero.requested(cfg)
    if source is None:
        return
    deepspeed_file(source, given=cfg.train.deepspeed is not None)
    if LOSSES[cfg.loss.name].clip:
        raise TrainerError(
            f"loss.name={cfg.loss.name} is not supported under DeepSpeed: ZeRO keeps its own float32 copy of the "
            "weights, so clipping the module's weights would be undone by the next step. Train it without DeepSpeed."
        )
    if cfg.speed.channels_last:
        raise TrainerError(
            "speed.channels_last=true cannot run under DeepSpeed: ZeRO flattens the weights, which needs them in the "
            "plain (NCHW) layout. Drop speed.channels_last, or train with DDP."
        )
    if (cfg.train.precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")) == "fp16":
        raise TrainerError(
            "train.precision=fp16 is not supported under DeepSpeed (its loss scaler needs DeepSpeed's fp16 mode, which "
            "casts the weights); use train.precision=bf16 or no."
        )


def deepspeed_file(source: str, given: bool) -> None:
    """A ZeRO stage or a DeepSpeed JSON file the trainer can run: stage 1-2 (`given` as train.deepspeed; the launcher's
    --zero_stage may also say 0), no optimizer, scheduler or fp16/bf16 in the file."""
    if source.strip().isdigit() and (source in ("1", "2") or not given):
        config: dict = {"zero_optimization": {"stage": int(source)}}
    elif Path(source).is_file():
        try:
            config = json.loads(Path(source).read_text())
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise TrainerError(
                f"the DeepSpeed config {source} is not a JSON object ({' '.join(str(err).split())[:200]}). Fix the "
                f"file, or give a ZeRO stage instead: train.deepspeed=2."
            ) from None
        if not isinstance(config, dict):
            raise TrainerError(f"the DeepSpeed config {source} holds a {type(config).__name__}, not a JSON object.")
    else:
        raise TrainerError(f"train.deepspeed={source!r} is neither a ZeRO stage (1 or 2) nor a DeepSpeed JSON file.")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise TrainerError(
            f"DeepSpeed ZeRO stage {stage} is not supported: ZeRO-3 partitions the weights themselves, while the "
            f"penalty and the generator step read the critic's full module. Use stage 1 or 2."
        )
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise TrainerError(
                f"the DeepSpeed config sets '{key}': remove it; the trainer builds its own from optim.*."
            )
    for key in ("fp16", "bf16"):
        if str(config.get(key, {}).get("enabled", False)).lower() == "true":
            raise TrainerError(
                f"the DeepSpeed config enables '{key}', which casts the weights and leaves no float32 critic for the "
                f"gradient penalty. Remove it and set train.precision=bf16 (or use a launch/zero*-bf16.yaml): the "
                f"engines then keep float32 weights and run the forward under autocast."
            )
