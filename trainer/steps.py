"""One critic step and one generator step: the math of Algorithm 1 on prepared models, and the non-finite guard."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Optional

import torch
from accelerate import Accelerator

from trainer.config import Config
from trainer.data import Batches
from trainer.ema import EMA
from trainer.errors import TrainerError
from trainer.losses import (
    LossSpec,
    acgan_critic_loss,
    acgan_generator_loss,
    class_accuracy,
    clip_weights,
    gradient_penalty,
)
from trainer.runtime import fp32_forward, raw_module
from trainer.speed import adam_flags, critic_backward_kwargs, joint_forward, penalty_plan
from trainer.stats import Stats

if TYPE_CHECKING:
    from trainer.cuda_graph import StaticFeed


@dataclass
class Parts:
    """What one training step touches."""

    cfg: Config
    accelerator: Accelerator
    spec: LossSpec
    generator: torch.nn.Module
    critic: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    batches: Batches
    ema: Optional[EMA]
    stats: Stats
    step: int = 0  # generator steps done
    num_classes: int = 0  # > 0: class-conditional (AC-GAN) training with this many classes
    guard: "NonFiniteGuard" = field(default_factory=lambda: NonFiniteGuard(0))
    timer: "PhaseTimer" = field(default_factory=lambda: PhaseTimer())
    critic_steps: int = 0  # critic steps done by this process since it started (the lazy penalty's clock)
    feed: Optional["StaticFeed"] = None  # speed.cuda_graph: inputs from trainer.cuda_graph's fixed buffers
    graph: Optional[object] = None  # speed.cuda_graph: trainer.cuda_graph.GraphedStep, replayed by loop.train_step


class PhaseTimer:
    """Milliseconds per phase, measured (with device syncs) only on steps where `enabled` is set: one per log interval.

    `penalty` is the interpolates' forward and first (input-gradient) backward; its double backward runs inside the
    critic's single backward and counts as `critic`, which excludes the penalty part.
    """

    def __init__(self) -> None:
        self.enabled, self.ms = False, {}

    @contextmanager
    def phase(self, name: str, device: torch.device):
        if not self.enabled:
            yield
            return
        _sync(device)
        start = time.perf_counter()
        yield
        _sync(device)
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)

    def report(self, stats: Stats) -> None:
        if self.ms:
            penalty = self.ms.get("penalty", 0.0)
            stats.report("time_critic_ms", self.ms.get("critic", 0.0) - penalty)
            stats.report("time_penalty_ms", penalty)
            stats.report("time_generator_ms", self.ms.get("generator", 0.0))
        self.enabled, self.ms = False, {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fault_steps(spec: str) -> set[tuple[int, int]]:
    """Test-only fault injection: "3,4@1" makes the critic loss NaN at step 3 (every process) and 4 (rank 1 only)."""
    out = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        step, _, rank = item.partition("@")
        out.add((int(step), int(rank) if rank else -1))
    return out


FAULT_NAN_STEPS = _fault_steps(os.environ.get("WGAN_GP_FAULT_NAN_AT", ""))


class NonFiniteGuard:
    """Skips updates whose gradients are NaN/Inf and stops the run after `limit` skipped updates in a row.

    Gradients are checked after DDP's all-reduce, so every process sees the same verdict and skips alike. Under fp16
    the GradScaler already skips such steps (and lowers its scale); those skips are counted the same way.

    With a fused optimizer (Adam's fused kernel, the default on CUDA) the verdict never leaves the device: it goes to
    the kernel as `found_inf`, which then leaves weights, moments and step count untouched (as under GradScaler), and
    the counts stay device tensors. `check()`, at every log interval and before every checkpoint, reads them and
    stops the run then, so no checkpoint is written after `limit` skips in a row. Otherwise the verdict is read at
    once (a device sync per update, free on CPU).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.host_total, self.in_a_row = limit, 0, {}  # in_a_row: per optimizer
        self.counts: dict[int, torch.Tensor] = {}  # per fused optimizer, on its device: (skipped, in a row, worst)
        self.deferred: Optional[list] = None  # while a CUDA graph is captured: (optimizer, flag), counted per replay

    def step(self, p: Parts, optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> None:
        fused = _fused_inner(optimizer)
        if self.limit and p.accelerator.scaler is None and fused is not None:
            found = _nonfinite_flag(module)
            fused.found_inf = found
            try:
                optimizer.step()
            finally:
                del fused.found_inf
            if self.deferred is not None:
                self.deferred.append((id(optimizer), found))
            else:
                self.count_on_device(id(optimizer), found)
            return
        if self.limit and p.accelerator.scaler is None and bool(_nonfinite_flag(module).item()):
            optimizer.zero_grad(set_to_none=True)
            return self._skipped(p, id(optimizer))
        optimizer.step()
        if p.accelerator.optimizer_step_was_skipped:
            return self._skipped(p, id(optimizer))
        self.in_a_row[id(optimizer)] = 0

    @property
    def total(self) -> int:
        """Updates skipped so far (reads the device counts: call it at log time, not inside the step)."""
        return self.host_total + sum(int(c[0].item()) for c in self.counts.values())

    def check(self, p: Parts) -> None:
        """Stops the run if a fused optimizer skipped `limit` updates in a row (reads the device counts)."""
        for counts in self.counts.values():
            if self.limit and counts[2].item() >= self.limit:
                self._stop(p)

    def count_on_device(self, key: int, found: torch.Tensor) -> None:
        if key not in self.counts:
            self.counts[key] = torch.zeros(3, device=found.device)
        total, in_a_row, worst = self.counts[key].unbind()
        in_a_row = (in_a_row + found) * found
        self.counts[key] = torch.stack([total + found, in_a_row, torch.maximum(worst, in_a_row)])

    def _skipped(self, p: Parts, key: int) -> None:
        self.in_a_row[key], self.host_total = self.in_a_row.get(key, 0) + 1, self.host_total + 1
        if self.limit and self.in_a_row[key] >= self.limit:
            self._stop(p)

    def _stop(self, p: Parts) -> None:
        raise TrainerError(
            f"{self.limit} updates in a row had non-finite (NaN/Inf) gradients (seen by step {p.step}); the run stopped"
            f" without writing a checkpoint, so the last good one in {p.cfg.run.dir}/checkpoints is intact. Lower "
            f"optim.lr_d/lr_g, check the data for NaNs, or use train.precision=bf16 instead of fp16; resume with "
            f"run.resume=latest (train.max_nonfinite sets how many skips in a row are tolerated)."
        )


def _fused_inner(optimizer: torch.optim.Optimizer) -> Optional[torch.optim.Optimizer]:
    """The torch optimizer inside Accelerate's wrapper when all its groups run a fused kernel that takes found_inf."""
    inner = getattr(optimizer, "optimizer", optimizer)
    fusable = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD))
    return inner if fusable and all(g.get("fused") for g in inner.param_groups) else None


def _nonfinite_flag(module: torch.nn.Module) -> torch.Tensor:
    """float32 scalar on the gradients' device: 1 if any gradient holds a NaN/Inf, else 0 (no host sync)."""
    grads = [q.grad for q in module.parameters() if q.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    norms = torch._foreach_norm(grads)  # one fused pass; a NaN/Inf anywhere makes its tensor's norm non-finite
    return (~torch.isfinite(torch.stack(norms).float().sum())).float()


def generate(generator: torch.nn.Module, z: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """G(z), or G(z, y) for a class-conditional generator."""
    return generator(z) if labels is None else generator(z, labels)


def critic_inputs(p: Parts) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A critic step's draws, in this order: the real batch (and its labels when conditional), z, eps."""
    n, device = p.cfg.train.batch_size, p.accelerator.device
    real, labels = p.batches.next_labelled() if p.num_classes else (p.batches.next(), None)
    z = torch.randn(n, p.cfg.model.z_dim, device=device)
    eps = torch.rand(n, device=device)  # drawn for every loss, so the RNG stream does not depend on the loss
    return real, labels, z, eps


def generator_noise(p: Parts) -> torch.Tensor:
    n = p.cfg.train.batch_size_g or p.cfg.train.batch_size
    return torch.randn(n, p.cfg.model.z_dim, device=p.accelerator.device)


def critic_step(p: Parts) -> None:
    """One critic update: a single forward over real and fake together, the fp32 penalty, one backward."""
    cfg, device, n = p.cfg, p.accelerator.device, p.cfg.train.batch_size
    if p.feed is not None:  # inside a CUDA graph: the buffers filled before the replay
        (real, z, eps), labels = p.feed.critic(), None
    else:
        real, labels, z, eps = critic_inputs(p)
    with torch.no_grad():  # conditional: fakes use the real batch's labels, as the paper's AC-GAN code
        fake = generate(raw_module(p.generator), z, labels).float()
    if joint_forward(cfg, device):  # no batch statistics in any critic: one pass over both is exact
        both = torch.cat([real, fake])
        out, logits = p.critic(both, with_classes=True) if p.num_classes else (p.critic(both), None)
    else:  # two passes (smaller activations; faster on CPUs); the second skips DDP, which reduces once anyway
        critic_fake = raw_module(p.critic)
        if p.num_classes:
            (r, lr), (f, lf) = p.critic(real, with_classes=True), critic_fake(fake, with_classes=True)
            out, logits = torch.cat([r, f]), torch.cat([lr, lf])
        else:
            out, logits = torch.cat([p.critic(real), critic_fake(fake)]), None
    d_real, d_fake = out[:n].float(), out[n:].float()
    loss = p.spec.critic(d_real, d_fake)
    if logits is not None:
        loss = loss + cfg.loss.acgan_scale * acgan_critic_loss(logits[:n], labels)
        p.stats.report("acc_real", class_accuracy(logits[:n], labels))
        p.stats.report("acc_fake", class_accuracy(logits[n:], labels))
    rows, weight = penalty_plan(cfg, p.step, p.critic_steps, n)  # (n, lambda) unless speed.* says otherwise
    p.critic_steps += 1
    if p.spec.penalty and weight > 0:
        critic_fp32, one_sided = partial(fp32_forward, p.critic), p.spec.penalty == "one-sided"
        with p.timer.phase("penalty", device):
            penalty, norms = gradient_penalty(critic_fp32, real[:rows], fake[:rows], eps[:rows], one_sided=one_sided)
        loss = loss + weight * penalty
        p.stats.report("penalty", penalty)
        p.stats.report_spread("grad_norm", norms)
    if cfg.loss.drift > 0:
        loss = loss + cfg.loss.drift * d_real.pow(2).mean()
    if FAULT_NAN_STEPS & {(p.step + 1, -1), (p.step + 1, p.accelerator.process_index)}:
        loss = loss * float("nan")
    p.opt_d.zero_grad(set_to_none=True)
    p.accelerator.backward(loss, **critic_backward_kwargs(cfg, p.accelerator, p.critic))  # none into x_hat
    p.guard.step(p, p.opt_d, p.critic)
    if p.spec.clip:
        clip_weights(raw_module(p.critic), cfg.loss.clip)
    p.stats.report("loss_d", loss)
    p.stats.report("wasserstein", d_real.mean() - d_fake.mean())
    p.stats.report("d_real", d_real.mean())


def generator_step(p: Parts) -> None:
    """One generator update through a frozen critic (outside DDP: the critic's gradients are not needed)."""
    cfg, device = p.cfg, p.accelerator.device
    n = cfg.train.batch_size_g or cfg.train.batch_size
    z = p.feed.z_g if p.feed is not None else generator_noise(p)
    labels = torch.randint(0, p.num_classes, (n,), device=device) if p.num_classes else None
    critic = raw_module(p.critic).requires_grad_(False)
    fake = generate(p.generator, z, labels)
    if labels is None:
        loss = p.spec.generator(critic(fake).float())
    else:
        score, logits = critic(fake, with_classes=True)
        loss = p.spec.generator(score.float()) + cfg.loss.acgan_scale_g * acgan_generator_loss(logits, labels)
    p.opt_g.zero_grad(set_to_none=True)
    p.accelerator.backward(loss)
    critic.requires_grad_(True)
    p.guard.step(p, p.opt_g, p.generator)
    if p.ema is not None:
        p.ema.update(raw_module(p.generator))
    p.stats.report("loss_g", loss)


def make_optimizers(
    cfg: Config,
    spec: LossSpec,
    generator: torch.nn.Module,
    critic: torch.nn.Module,
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
