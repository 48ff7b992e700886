"""The builder: turns a Config into the objects a run is made of; the only place in trainer.core that reads Config."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from trainer.accel.compiled import compiled_losses
from trainer.accel.runtime import fp32_forward, prepare_pair, raw_module
from trainer.accel.speed import adam_flags, apply_speed, compile_losses, critic_backward_kwargs, joint_forward
from trainer.accel.timer import PhaseTimer
from trainer.config import Config
from trainer.core.augment import diff_augment
from trainer.core.ema import EMA
from trainer.core.guard import NonFiniteGuard
from trainer.core.inputs import Draws
from trainer.core.losses import LOSSES, LossSpec, Objective, Penalty, acgan_critic_term, drift_term
from trainer.core.schedule import lr_factor
from trainer.core.step import TrainState, Update, critic_loss, generator_loss, iteration, joint_pass, two_passes
from trainer.data.registry import DATASETS, Batches, make_batches
from trainer.nets.models import build_models
from trainer.run.stats import Stats


@dataclass
class Training:
    """Everything one run holds: the step's state and inputs, and the bookkeeping around it (EMA, stats, guard)."""

    cfg: Config
    accelerator: Accelerator
    state: TrainState
    inputs: Draws
    batches: Batches
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: Optional[EMA]
    guard: NonFiniteGuard
    stats: Stats
    timer: PhaseTimer
    penalty: Optional[Penalty]
    num_classes: int  # > 0: class-conditional (AC-GAN) training with this many classes
    graph: Optional[Callable] = None  # speed.cuda_graph: trainer.accel.cuda_graph.GraphedIteration

    @property
    def step(self) -> int:
        return self.state.step

    def resume_at(self, step: int) -> None:
        """After a checkpoint is loaded: the step count, and the lazy penalty's clock at that step's phase boundary."""
        self.state.step = self.guard.at_step = step
        if self.penalty is not None:
            self.penalty.clock = step * self.inputs.n_critic

    def apply_schedule(self) -> None:
        """Sets both learning rates for the coming generator step: a pure function of the step, so resume is exact."""
        factor = lr_factor(self.cfg.optim.schedule, self.state.step, self.cfg.train.steps)
        for optimizer in (self.opt_g, self.opt_d):
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def build(cfg: Config, accelerator: Accelerator, batches: Optional[Batches] = None) -> Training:
    """Data (unless `batches` is given), models, EMA, optimizers, prepared; then each process seeded for its noise."""
    set_seed(cfg.seed)  # the same initial weights on every process
    if batches is None:
        with accelerator.main_process_first():  # a download happens once, on the main process
            batches = batches_from_config(cfg, accelerator.device, accelerator.process_index, accelerator.num_processes)
    num_classes = getattr(batches, "num_classes", 0) if cfg.model.conditional else 0
    channels = DATASETS[cfg.data.name].channels
    generator, critic = build_models(
        cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, cfg.data.image_size, num_classes=num_classes
    )
    ema = EMA(generator, cfg.train.ema_decay).to(accelerator.device) if cfg.train.ema_decay > 0 else None
    apply_speed(cfg, generator, critic, accelerator)  # channels_last, torch.compile, TF32 (cfg.speed)
    spec = LOSSES[cfg.loss.name]
    opt_g, opt_d = make_optimizers(cfg, spec, generator, critic, accelerator)
    generator, critic, opt_g, opt_d = prepare_pair(accelerator, generator, critic, opt_g, opt_d)
    set_seed(cfg.seed, device_specific=True)  # then each process its own noise stream
    skipped = (lambda: accelerator.optimizer_step_was_skipped) if accelerator.scaler is not None else None
    guard = NonFiniteGuard(cfg.train.max_nonfinite, cfg.run.dir, skipped)
    timer = PhaseTimer(accelerator.device)
    penalty = make_penalty(cfg, spec, critic, timer)
    objective = make_objective(cfg, spec, penalty, num_classes)
    critic_raw = raw_module(critic)
    scores = joint_pass(critic) if joint_forward(cfg, accelerator.device) else two_passes(critic, critic_raw)
    losses = critic_loss(scores, objective), generator_loss(generator, critic_raw, objective)
    if compile_losses(cfg):  # speed.compile: each whole loss one compiled function, the penalty inside
        losses = compiled_losses(scores, objective, penalty, losses[1], cfg.speed.compile_backend)
    backward_d = partial(accelerator.backward, **critic_backward_kwargs(cfg, accelerator, critic))  # none into x_hat
    state = TrainState(
        generator=generator,
        sample=raw_module(generator),
        critic=critic_raw,
        critic_loss=losses[0],
        generator_loss=losses[1],
        objective=objective,
        update_critic=Update(opt_d, critic, backward_d, guard, partial(objective.after_critic_update, critic_raw)),
        update_generator=Update(opt_g, generator, accelerator.backward, guard),
        augment=diff_augment(cfg.data.augment),  # identity unless data.augment names a DiffAugment policy
    )
    batch_g = cfg.train.batch_size_g or cfg.train.batch_size
    inputs = Draws(
        batches, cfg.train.n_critic, cfg.train.batch_size, batch_g, cfg.model.z_dim, num_classes, accelerator.device
    )
    training = Training(
        cfg, accelerator, state, inputs, batches, opt_g, opt_d, ema, guard, Stats(), timer, penalty, num_classes
    )
    if cfg.speed.cuda_graph:
        from trainer.accel.cuda_graph import GraphedIteration

        run, modules = partial(iteration, state), (generator, critic)  # DDP's all-reduces are captured too
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


def make_penalty(cfg: Config, spec: LossSpec, critic: nn.Module, timer: PhaseTimer) -> Optional[Penalty]:
    """The loss's gradient penalty in float32 (None for losses without one, or lambda 0)."""
    if spec.penalty is None or not cfg.loss.gp_weight > 0:
        return None
    return Penalty(
        forward=partial(fp32_forward, critic),
        weight=cfg.loss.gp_weight,
        one_sided=spec.penalty == "one-sided",
        every=cfg.loss.lazy_penalty,
        fraction=cfg.loss.penalty_fraction,
        around=timer.around("penalty"),
    )


def make_objective(cfg: Config, spec: LossSpec, penalty: Optional[Penalty], num_classes: int) -> Objective:
    """The loss's own terms, then (in this order) AC-GAN's class term, the penalty and the drift term."""
    terms: list = []
    if num_classes:
        terms.append(acgan_critic_term(cfg.loss.acgan_scale))
    if penalty is not None:
        terms.append(penalty)
    if cfg.loss.drift > 0:
        terms.append(drift_term(cfg.loss.drift))
    return Objective(
        spec,
        terms,
        acgan_scale_g=cfg.loss.acgan_scale_g if num_classes else None,
        clip=cfg.loss.clip if spec.clip else 0.0,
    )


def make_optimizers(
    cfg: Config,
    spec: LossSpec,
    generator: nn.Module,
    critic: nn.Module,
    accelerator: Optional[Accelerator] = None,
):
    """The two optimizers (before `prepare`); `accelerator` decides speed.fused_adam's default (fused on CUDA)."""
    name, betas = cfg.optim.name or spec.optimizer, tuple(cfg.optim.betas or spec.betas)

    def make(params, lr: Optional[float]) -> torch.optim.Optimizer:
        lr = lr or spec.lr
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, betas=betas, **adam_flags(cfg, accelerator))
        if name == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)

    return make(generator.parameters(), cfg.optim.lr_g), make(critic.parameters(), cfg.optim.lr_d)
