"""The builder: turns a Config into the objects a run is made of; the only place in trainer.core that reads Config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from trainer.accel.plan import ExecutionPlan
from trainer.accel.plan import resolve as resolve_plan
from trainer.accel.runtime import fingerprint, fp32_forward, prepare_pair, raw_module
from trainer.accel.speed import apply_plan
from trainer.accel.timer import PhaseTimer
from trainer.config import Config, to_yaml
from trainer.core.augment import diff_augment
from trainer.core.clock import Clock
from trainer.core.compiled import compiled_losses
from trainer.core.ema import EMA
from trainer.core.guard import NonFiniteGuard
from trainer.core.inputs import Draws
from trainer.core.losses import LOSSES, LossSpec, Objective, Penalty, acgan_critic_term, drift_term
from trainer.core.schedule import horizon, lr_factor
from trainer.core.step import (
    StepParts,
    Update,
    critic_loss,
    generator_loss,
    iteration,
    joint_pass,
    relativistic_generator_loss,
    two_passes,
)
from trainer.data.registry import DATASETS, Batches, make_batches
from trainer.nets.models import build_models
from trainer.run.checkpoint import Snapshot
from trainer.run.stats import Stats


@dataclass
class Training:
    """One run: the step's parts and inputs, and the bookkeeping around them (EMA, statistics, guard, timer).

    It owns its state: `state_dict()` is everything a checkpoint holds of it besides Accelerate's own state (networks,
    optimizers, grad scaler, RNG), and `load_state_dict(record)` is its mirror image (trainer.run.checkpoint saves and
    loads both halves)."""

    cfg: Config
    accelerator: Accelerator
    plan: ExecutionPlan
    parts: StepParts
    inputs: Draws
    batches: Batches
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: Optional[EMA]
    guard: NonFiniteGuard
    stats: Stats
    timer: PhaseTimer
    penalties: list[Penalty]  # WGAN-GP's one, R1 (and R2), or none
    num_classes: int  # > 0: class-conditional (AC-GAN) training with this many classes
    graph: Optional[Callable] = None  # speed.cuda_graph: trainer.accel.cuda_graph.GraphedIteration

    @property
    def step(self) -> int:
        return self.parts.clock.step

    @property
    def penalty(self) -> Optional[Penalty]:
        """The first penalty (WGAN-GP's, or R1), or None."""
        return self.penalties[0] if self.penalties else None

    @property
    def sampler(self) -> nn.Module:
        """The generator that draws the run's pictures and its export: the EMA one when the run keeps one."""
        return self.ema.model if self.ema is not None else self.parts.generator_raw

    def state_dict(self) -> Snapshot:
        """What a checkpoint holds of this run: step, data position, per process the parameter fingerprints and the
        log interval's running statistics, the resolved config, the export and the EMA."""
        prints = {"generator": fingerprint(self.parts.generator), "critic": fingerprint(self.parts.critic)}
        return Snapshot(
            step=self.step,
            shared={"data": self.batches.state_dict(), "num_classes": self.num_classes},
            per_process={"fingerprints": prints, "stats": self.stats.state_dict()},
            config_yaml=to_yaml(self.cfg) + self.plan.comment(),
            export=self.sampler,
            ema=self.ema,
        )

    def load_state_dict(self, record: dict) -> None:
        """The mirror of state_dict, from a checkpoint's record (the EMA and Accelerate's state are already back)."""
        self.resume_at(record["step"])
        self.batches.load_state_dict(record["data"])
        if len(record.get("stats", [])) == self.accelerator.num_processes:  # the log interval's running sums
            self.stats.load_state_dict(record["stats"][self.accelerator.process_index])

    def resume_at(self, step: int) -> None:
        """The one step counter at `step`, and with it the lazy penalty's schedule and the guard's message."""
        self.parts.clock.resume(step, self.inputs.n_critic)

    def apply_schedule(self) -> None:
        """Sets both learning rates for the coming generator step: a pure function of the step, so resume is exact."""
        factor = lr_factor(self.cfg.optim.schedule, self.step, horizon(self.cfg))
        for optimizer in (self.opt_g, self.opt_d):
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def build(cfg: Config, accelerator: Accelerator, batches: Optional[Batches] = None) -> Training:
    """Data (unless `batches` is given), models, EMA, optimizers, prepared; then each process seeded for its noise."""
    set_seed(cfg.seed)  # the same initial weights on every process
    if batches is None:
        with accelerator.main_process_first():  # a download happens once, on the main process
            batches = batches_from_config(cfg, accelerator.device, accelerator.process_index, accelerator.num_processes)
    plan = resolve_plan(cfg, accelerator)
    num_classes = getattr(batches, "num_classes", 0) if cfg.model.conditional else 0
    channels = DATASETS[cfg.data.name].channels
    generator, critic = build_models(
        cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, cfg.data.image_size, num_classes=num_classes
    )
    ema = EMA(generator, cfg.train.ema_decay).to(accelerator.device) if cfg.train.ema_decay > 0 else None
    apply_plan(plan, generator, critic)  # channels_last, torch.compile of the modules, TF32, cuDNN
    spec = LOSSES[cfg.loss.name]
    opt_g, opt_d = make_optimizers(cfg, spec, generator, critic, plan)
    generator, critic, opt_g, opt_d = prepare_pair(accelerator, generator, critic, opt_g, opt_d)
    set_seed(cfg.seed, device_specific=True)  # then each process its own noise stream
    clock = Clock()
    skipped = (lambda: accelerator.optimizer_step_was_skipped) if accelerator.scaler is not None else None
    guard = NonFiniteGuard(cfg.train.max_nonfinite, cfg.run.dir, skipped, clock)
    timer = PhaseTimer(accelerator.device)
    penalties = make_penalties(cfg, spec, critic, timer, clock)
    objective = make_objective(cfg, spec, penalties, num_classes)
    critic_raw = raw_module(critic)
    scores = joint_pass(critic) if plan.joint_forward else two_passes(critic, critic_raw)
    generator_side = relativistic_generator_loss if spec.relativistic else generator_loss
    loss_d, loss_g = critic_loss(scores, objective), generator_side(generator, critic_raw, objective)
    if plan.compile == "loss":  # each whole loss one compiled function, the penalties inside
        loss_d, loss_g = compiled_losses(scores, objective, penalties, loss_g, plan.compile_backend)
    critic_weights = {"inputs": [q for q in critic.parameters() if q.requires_grad]}  # none into x_hat
    backward_d = partial(accelerator.backward, **(critic_weights if plan.backward_params_only else {}))
    parts = StepParts(
        generator=generator,
        generator_raw=raw_module(generator),
        critic=critic_raw,
        critic_loss=loss_d,
        generator_loss=loss_g,
        objective=objective,
        update_critic=Update(opt_d, critic, backward_d, guard, partial(objective.after_critic_update, critic_raw)),
        update_generator=Update(opt_g, generator, accelerator.backward, guard),
        clock=clock,
        augment=diff_augment(cfg.data.augment),  # identity unless data.augment names a DiffAugment policy
    )
    inputs = Draws(
        batches,
        n_critic=cfg.train.n_critic,
        batch=cfg.train.batch_size,
        batch_g=cfg.train.batch_size_g or cfg.train.batch_size,
        z_dim=cfg.model.z_dim,
        num_classes=num_classes,
        device=accelerator.device,
        paired_real=spec.relativistic,
    )
    training = Training(
        cfg=cfg,
        accelerator=accelerator,
        plan=plan,
        parts=parts,
        inputs=inputs,
        batches=batches,
        opt_g=opt_g,
        opt_d=opt_d,
        ema=ema,
        guard=guard,
        stats=Stats(),
        timer=timer,
        penalties=penalties,
        num_classes=num_classes,
    )
    if plan.cuda_graph:
        from trainer.accel.cuda_graph import GraphedIteration

        run, modules = partial(iteration, parts), (generator, critic)  # DDP's all-reduces are captured too
        training.graph = GraphedIteration(run, inputs, sample_shape(cfg), (opt_d, opt_g), modules)
    return training


def sample_shape(cfg: Config) -> tuple[int, ...]:
    """One real sample's shape: (C, S, S) images or (2,) toy points."""
    spec = DATASETS[cfg.data.name]
    return (2,) if spec.is_toy else (spec.channels, cfg.data.image_size, cfg.data.image_size)


def batches_from_config(cfg: Config, device: torch.device, rank: int, world: int) -> Batches:
    """make_batches with every data.* option of `cfg` (call it inside accelerator.main_process_first())."""
    d = cfg.data
    return make_batches(
        d.name, d.root, d.download, d.image_size, cfg.train.batch_size, device, rank, world, cfg.seed,
        crop=d.crop, crop_size=d.crop_size, flip=d.flip, num_workers=d.num_workers, labelled=cfg.model.conditional,
    )  # fmt: skip


def make_penalties(cfg: Config, spec: LossSpec, critic: nn.Module, timer: PhaseTimer, clock: Clock) -> list[Penalty]:
    """The loss's gradient penalties, each in float32: WGAN-GP's at the interpolates (none at lambda 0), or the
    zero-centred R1 (on real) and R2 (on fake), gamma/2 E||grad D(x)||^2 each (none at gamma 0)."""
    common = dict(
        forward=partial(fp32_forward, critic),
        clock=clock,
        every=cfg.loss.lazy_penalty,
        fraction=cfg.loss.penalty_fraction,
        around=timer.around("penalty"),
    )
    if spec.zero_centred:
        gamma = cfg.loss.gamma if cfg.loss.gamma is not None else spec.gamma
        if not gamma > 0:
            return []
        final = cfg.loss.gamma_final
        schedule = None if final is None else partial(cosine_decay, final / gamma, horizon(cfg))
        sides = {"real": "r1", "fake": "r2"} if spec.penalty == "r1r2" else {"real": "r1"}
        return [Penalty(weight=gamma / 2, at=at, centre=0.0, name=name, schedule=schedule, **common)
                for at, name in sides.items()]  # fmt: skip
    if spec.penalty is None or not cfg.loss.gp_weight > 0:
        return []
    return [Penalty(weight=cfg.loss.gp_weight, one_sided=spec.penalty == "one-sided", **common)]


def cosine_decay(final_ratio: float, steps: int, step: int) -> float:
    """1 at step 0, `final_ratio` at `steps`, along half a cosine (R3GAN's schedule shape for gamma)."""
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def make_objective(cfg: Config, spec: LossSpec, penalties: list[Penalty], num_classes: int) -> Objective:
    """The loss's own terms, then (in this order) AC-GAN's class term, the penalties and the drift term."""
    terms: list = []
    if num_classes:
        terms.append(acgan_critic_term(cfg.loss.acgan_scale))
    terms.extend(penalties)
    if cfg.loss.drift > 0:
        terms.append(drift_term(cfg.loss.drift))
    return Objective(
        spec,
        terms,
        acgan_scale_g=cfg.loss.acgan_scale_g if num_classes else None,
        clip=cfg.loss.clip if spec.clip else 0.0,
    )


def make_optimizers(cfg: Config, spec: LossSpec, generator: nn.Module, critic: nn.Module, plan: ExecutionPlan):
    """The two optimizers (before `prepare`); the plan says whether Adam runs its fused kernel."""
    name, betas = cfg.optim.name or spec.optimizer, tuple(cfg.optim.betas or spec.betas)

    def make(params, lr: Optional[float]) -> torch.optim.Optimizer:
        lr = lr or spec.lr
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, betas=betas, **({"fused": True} if plan.fused_adam else {}))
        if name == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)

    return make(generator.parameters(), cfg.optim.lr_g), make(critic.parameters(), cfg.optim.lr_d)
