"""The training loop: n_critic critic steps, one generator step, then bookkeeping (EMA, log, samples, checkpoint)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer import checkpoint
from trainer.config import Config, to_yaml
from trainer.data import DATASETS, TOYS, Batches, batches_from_config
from trainer.ema import EMA
from trainer.layers import class_rows
from trainer.losses import LOSSES
from trainer.models import build_models, parameter_count
from trainer.run_dir import prepare_run_dir
from trainer.runtime import fingerprint, fp32_forward, make_accelerator, prepare_pair, raw_module
from trainer.schedule import lr_factor
from trainer.signals import Preempted, StopFlag
from trainer.speed import apply_speed
from trainer.stats import MetricsFile, Stats
from trainer.steps import NonFiniteGuard, Parts, critic_step, generate, generator_step, make_optimizers
from trainer.tracking import log_image, start_tracking, write_summary
from trainer.visual import save_grid, save_toy_plot


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment `cfg`; returns the run folder."""
    stop = StopFlag()  # before any slow start-up work, so an early SIGUSR1/SIGTERM still ends in a checkpoint
    accelerator = make_accelerator(cfg)
    run_dir, resume_from = prepare_run_dir(cfg, accelerator)
    p = build_parts(cfg, accelerator)
    if resume_from is not None:
        resume_from, record = checkpoint.load_with_fallback(accelerator, run_dir, resume_from, cfg.run.resume, p.ema)
        p.step, p.critic_steps = record["step"], record["step"] * cfg.train.n_critic
        p.batches.load_state_dict(record["data"])
    announce(p, run_dir, resume_from)
    try:
        run_loop(p, run_dir, stop)
        write_summary(accelerator, run_dir)
    finally:
        accelerator.end_training()
    return run_dir


def build_parts(cfg: Config, accelerator: Accelerator, batches: Optional[Batches] = None) -> Parts:
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
    guard = NonFiniteGuard(cfg.train.max_nonfinite)
    parts = Parts(cfg, accelerator, spec, generator, critic, opt_g, opt_d, batches, ema, Stats(), guard=guard)
    parts.num_classes = num_classes
    if cfg.speed.cuda_graph:
        from trainer.cuda_graph import GraphedStep

        parts.graph = GraphedStep(parts)
    return parts


def train_step(p: Parts, eager: bool = False) -> None:
    """One generator iteration: the learning rates for it, n_critic critic steps, one generator step.

    Under speed.cuda_graph the device work is a graph replay, except on timed steps (one per log interval, whose
    phase timers need device syncs) and when `eager` is asked for (FLOP counting): those run the same math eagerly.
    """
    apply_schedule(p)
    if p.graph is not None and not (eager or p.timer.enabled):
        p.graph.run(p, iteration)
    else:
        iteration(p)
    p.step += 1


def iteration(p: Parts) -> None:
    """The device work of one generator iteration: n_critic critic steps, then one generator step."""
    with p.timer.phase("critic", p.accelerator.device):
        for _ in range(p.cfg.train.n_critic):
            critic_step(p)
    with p.timer.phase("generator", p.accelerator.device):
        generator_step(p)


def apply_schedule(p: Parts) -> None:
    """Sets both learning rates for the coming generator step: a pure function of the step, so resume is exact."""
    factor = lr_factor(p.cfg.optim.schedule, p.step, p.cfg.train.steps)
    for optimizer in (p.opt_g, p.opt_d):
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def run_loop(p: Parts, run_dir: Path, stop: StopFlag) -> None:
    cfg, accelerator = p.cfg, p.accelerator
    metrics = MetricsFile(run_dir / "metrics.jsonl", accelerator.is_main_process, p.step if p.step else None)
    fixed_z = torch.randn(cfg.log.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    bar = tqdm(total=cfg.train.steps, initial=p.step, disable=not accelerator.is_main_process, dynamic_ncols=True)
    clock = (time.perf_counter(), p.step)
    while p.step < cfg.train.steps:
        p.timer.enabled = (p.step + 1) % cfg.log.every == 0 or p.step + 1 == cfg.train.steps
        train_step(p)
        p.timer.report(p.stats)
        bar.update(1)
        step, last = p.step, p.step == cfg.train.steps
        scores = maybe_evaluate(p, step, last)
        if step % cfg.log.every == 0 or last or scores:
            p.guard.check(p)
            record = log_metrics(p, step, clock, metrics, scores)
            clock = (time.perf_counter(), step)
            bar.set_postfix(
                loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}", img_s=f"{record['imgs_per_s']:.0f}"
            )
        if (cfg.log.sample_every and step % cfg.log.sample_every == 0) or last:
            save_samples(p, run_dir / "samples" / f"step-{step:08d}.png", fixed_z)
        signum = stop.agreed(accelerator)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last or signum:
            p.guard.check(p)  # a run that is skipping every update stops here, before it writes a checkpoint
            save_checkpoint(p, run_dir, step)
        if signum and not last:
            bar.close()
            raise Preempted(signum, step)
    bar.close()


def maybe_evaluate(p: Parts, step: int, last: bool) -> dict[str, float]:
    """eval.* metrics of the EMA (or live) generator every eval.every steps and at the end; all processes together."""
    every = p.cfg.eval.every
    if not every or (step % every and not last):
        return {}
    from trainer.evaluate import evaluate

    scores = evaluate(p.ema.model if p.ema is not None else p.generator, p.cfg, p.accelerator)
    return {f"eval_{key}": value for key, value in scores.items()}


def log_metrics(p: Parts, step: int, clock: tuple[float, int], metrics: MetricsFile, scores: dict) -> dict:
    cfg, world = p.cfg, p.accelerator.num_processes
    seconds = time.perf_counter() - clock[0]
    images = (step - clock[1]) * cfg.train.n_critic * cfg.train.batch_size * world
    record = {"step": step, "images_seen": step * cfg.train.n_critic * cfg.train.batch_size * world}
    record.update(p.stats.reduce(p.accelerator))
    record.update(skipped_updates=p.guard.total, peak_mem_mb=peak_memory_mb(p.accelerator.device), **scores)
    record.update(imgs_per_s=images / max(seconds, 1e-9), world_size=world, time=time.time())
    record.update(lr_d=float(p.opt_d.param_groups[0]["lr"]), lr_g=float(p.opt_g.param_groups[0]["lr"]))
    metrics.write(record)
    if p.cfg.log.tracker != "none":
        p.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
    return record


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated by tensors; on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def save_samples(p: Parts, path: Path, fixed_z: torch.Tensor) -> None:
    """Main process only: the fixed-noise grid from the EMA generator (or the live one), or the toy scatter."""
    if not p.accelerator.is_main_process:
        return
    net = p.ema.model if p.ema is not None else raw_module(p.generator)
    was_training = net.training
    net.eval()
    labels = class_rows(fixed_z.shape[0], p.num_classes).to(p.accelerator.device) if p.num_classes else None
    fake = generate(net, fixed_z.to(p.accelerator.device), labels).float()
    net.train(was_training)
    if p.cfg.data.name in TOYS:
        real = TOYS[p.cfg.data.name](fake.shape[0], generator=torch.Generator().manual_seed(p.cfg.seed + 1))
        critic = partial(fp32_forward, p.critic)
        save_toy_plot(fake, real, path, lambda x: critic(x.to(p.accelerator.device)), f"{p.cfg.data.name}, {path.stem}")
    else:
        save_grid(fake, path)
    if p.cfg.log.tracker != "none":
        log_image(p.accelerator, "samples", path, p.step)


def save_checkpoint(p: Parts, run_dir: Path, step: int) -> None:
    export = p.ema.model if p.ema is not None else raw_module(p.generator)
    prints = {"generator": fingerprint(p.generator), "critic": fingerprint(p.critic)}
    state = {"data": p.batches.state_dict(), "num_classes": p.num_classes}
    checkpoint.save(p.accelerator, run_dir, step, state, to_yaml(p.cfg), export, p.ema, prints, p.cfg.checkpoint.keep)


def announce(p: Parts, run_dir: Path, resume_from: Optional[Path]) -> None:
    accelerator, step = p.accelerator, p.step
    start_tracking(accelerator, p.cfg, run_dir)
    if accelerator.is_main_process:
        where = f"resuming from {resume_from} at step {step}" if resume_from else "fresh run"
        print(
            f"[wgan-gp] {where}; run folder {run_dir}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}, precision {accelerator.mixed_precision}; generator "
            f"{parameter_count(p.generator):,} params, critic {parameter_count(p.critic):,} params",
            flush=True,
        )
