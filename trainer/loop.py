"""The training loop: n_critic critic steps, one generator step, then bookkeeping (EMA, log, samples, checkpoint)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer import checkpoint
from trainer.config import Config, to_dict, to_yaml
from trainer.data import DATASETS, TOYS, Batches, make_batches
from trainer.ema import EMA
from trainer.losses import LOSSES, LossSpec, clip_weights, gradient_penalty
from trainer.models import build_models, parameter_count
from trainer.run_dir import prepare_run_dir
from trainer.runtime import fingerprint, fp32_forward, make_accelerator, raw_module
from trainer.stats import MetricsFile, Stats
from trainer.visual import save_grid, save_toy_plot


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


def critic_step(p: Parts) -> None:
    """One critic update: a single forward over real and fake together, the fp32 penalty, one backward."""
    cfg, device, n = p.cfg, p.accelerator.device, p.cfg.train.batch_size
    real = p.batches.next()
    z = torch.randn(n, cfg.model.z_dim, device=device)
    eps = torch.rand(n, device=device)  # drawn for every loss, so the RNG stream does not depend on the loss
    with torch.no_grad():
        fake = raw_module(p.generator)(z).float()
    out = p.critic(torch.cat([real, fake])).float()  # no batch statistics in any critic: one pass is exact
    d_real, d_fake = out[:n], out[n:]
    loss = p.spec.critic(d_real, d_fake)
    if p.spec.penalty and cfg.loss.gp_weight > 0:
        critic_fp32 = partial(fp32_forward, p.critic)
        penalty, norms = gradient_penalty(critic_fp32, real, fake, eps, one_sided=p.spec.penalty == "one-sided")
        loss = loss + cfg.loss.gp_weight * penalty
        p.stats.report("penalty", penalty)
        p.stats.report("grad_norm", norms)
    if cfg.loss.drift > 0:
        loss = loss + cfg.loss.drift * d_real.pow(2).mean()
    p.opt_d.zero_grad(set_to_none=True)
    p.accelerator.backward(loss)
    p.opt_d.step()
    if p.spec.clip:
        clip_weights(raw_module(p.critic), cfg.loss.clip)
    p.stats.report("loss_d", loss)
    p.stats.report("wasserstein", d_real.mean() - d_fake.mean())
    p.stats.report("d_real", d_real.mean())


def generator_step(p: Parts) -> None:
    """One generator update through a frozen critic (outside DDP: the critic's gradients are not needed)."""
    z = torch.randn(p.cfg.train.batch_size, p.cfg.model.z_dim, device=p.accelerator.device)
    critic = raw_module(p.critic).requires_grad_(False)
    loss = p.spec.generator(critic(p.generator(z)).float())
    p.opt_g.zero_grad(set_to_none=True)
    p.accelerator.backward(loss)
    p.opt_g.step()
    critic.requires_grad_(True)
    if p.ema is not None:
        p.ema.update(raw_module(p.generator))
    p.stats.report("loss_g", loss)


def make_optimizers(cfg: Config, spec: LossSpec, generator: torch.nn.Module, critic: torch.nn.Module):
    name, betas = cfg.optim.name or spec.optimizer, tuple(cfg.optim.betas or spec.betas)

    def make(params, lr: Optional[float]) -> torch.optim.Optimizer:
        lr = lr or spec.lr
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, betas=betas)
        if name == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)

    return make(generator.parameters(), cfg.optim.lr_g), make(critic.parameters(), cfg.optim.lr_d)


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment `cfg`; returns the run folder."""
    accelerator = make_accelerator(cfg)
    run_dir, resume_from = prepare_run_dir(cfg, accelerator)
    set_seed(cfg.seed)  # the same initial weights on every process
    with accelerator.main_process_first():  # a download happens once, on the main process
        batches = make_batches(
            cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.image_size, cfg.train.batch_size,
            accelerator.device, accelerator.process_index, accelerator.num_processes, cfg.seed,
        )  # fmt: skip
    generator, critic = build_models(
        cfg.model.name, cfg.model.z_dim, cfg.model.width, DATASETS[cfg.data.name].channels, cfg.data.image_size
    )
    ema = EMA(generator, cfg.train.ema_decay).to(accelerator.device) if cfg.train.ema_decay > 0 else None
    spec = LOSSES[cfg.loss.name]
    opt_g, opt_d = make_optimizers(cfg, spec, generator, critic)
    generator, critic, opt_g, opt_d = accelerator.prepare(generator, critic, opt_g, opt_d)
    set_seed(cfg.seed, device_specific=True)  # then each process its own noise stream
    step = 0
    if resume_from is not None:
        record = checkpoint.load(accelerator, resume_from, ema)
        step = record["step"]
        batches.load_state_dict(record["data"])
    p = Parts(cfg, accelerator, spec, generator, critic, opt_g, opt_d, batches, ema, Stats())
    announce(p, run_dir, resume_from, step)
    run_loop(p, run_dir, step)
    accelerator.end_training()
    return run_dir


def run_loop(p: Parts, run_dir: Path, step: int) -> None:
    cfg, accelerator = p.cfg, p.accelerator
    metrics = MetricsFile(run_dir / "metrics.jsonl", accelerator.is_main_process, step if step else None)
    fixed_z = torch.randn(cfg.log.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not accelerator.is_main_process, dynamic_ncols=True)
    clock = (time.perf_counter(), step)
    while step < cfg.train.steps:
        for _ in range(cfg.train.n_critic):
            critic_step(p)
        generator_step(p)
        step += 1
        bar.update(1)
        last = step == cfg.train.steps
        if step % cfg.log.every == 0 or last:
            record = log_metrics(p, step, clock, metrics)
            clock = (time.perf_counter(), step)
            bar.set_postfix(
                loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}", img_s=f"{record['imgs_per_s']:.0f}"
            )
        if (cfg.log.sample_every and step % cfg.log.sample_every == 0) or last:
            save_samples(p, run_dir / "samples" / f"step-{step:08d}.png", fixed_z)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last:
            save_checkpoint(p, run_dir, step)
    bar.close()


def log_metrics(p: Parts, step: int, clock: tuple[float, int], metrics: MetricsFile) -> dict:
    cfg, world = p.cfg, p.accelerator.num_processes
    seconds = time.perf_counter() - clock[0]
    images = (step - clock[1]) * cfg.train.n_critic * cfg.train.batch_size * world
    record = {"step": step, "images_seen": step * cfg.train.n_critic * cfg.train.batch_size * world}
    record.update(p.stats.reduce(p.accelerator))
    record.update(imgs_per_s=images / max(seconds, 1e-9), world_size=world, time=time.time())
    record.update(lr_d=p.opt_d.param_groups[0]["lr"], lr_g=p.opt_g.param_groups[0]["lr"])
    metrics.write(record)
    if p.cfg.log.tracker != "none":
        p.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
    return record


@torch.no_grad()
def save_samples(p: Parts, path: Path, fixed_z: torch.Tensor) -> None:
    """Main process only: the fixed-noise grid from the EMA generator (or the live one), or the toy scatter."""
    if not p.accelerator.is_main_process:
        return
    net = p.ema.model if p.ema is not None else raw_module(p.generator)
    was_training = net.training
    net.eval()
    fake = net(fixed_z.to(p.accelerator.device)).float()
    net.train(was_training)
    if p.cfg.data.name in TOYS:
        real = TOYS[p.cfg.data.name](fake.shape[0], generator=torch.Generator().manual_seed(p.cfg.seed + 1))
        critic = partial(fp32_forward, p.critic)
        save_toy_plot(fake, real, path, lambda x: critic(x.to(p.accelerator.device)), f"{p.cfg.data.name}, {path.stem}")
    else:
        save_grid(fake, path)


def save_checkpoint(p: Parts, run_dir: Path, step: int) -> None:
    export = p.ema.model if p.ema is not None else raw_module(p.generator)
    prints = {"generator": fingerprint(p.generator), "critic": fingerprint(p.critic)}
    checkpoint.save(
        p.accelerator, run_dir, step, {"data": p.batches.state_dict()}, to_yaml(p.cfg), export, p.ema, prints,
        p.cfg.checkpoint.keep,
    )  # fmt: skip


def announce(p: Parts, run_dir: Path, resume_from: Optional[Path], step: int) -> None:
    accelerator = p.accelerator
    if p.cfg.log.tracker != "none":
        wandb = {"dir": str(run_dir), "name": run_dir.name}
        accelerator.init_trackers(p.cfg.log.project, config=to_dict(p.cfg), init_kwargs={"wandb": wandb})
    if accelerator.is_main_process:
        where = f"resuming from {resume_from} at step {step}" if resume_from else "fresh run"
        print(
            f"[wgan-gp] {where}; run folder {run_dir}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}, precision {accelerator.mixed_precision}; generator "
            f"{parameter_count(p.generator):,} params, critic {parameter_count(p.critic):,} params",
            flush=True,
        )
