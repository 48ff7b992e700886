"""The training loop: n_critic critic steps, one generator step, then bookkeeping (EMA, log, samples, checkpoint)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer.accel.runtime import fingerprint, fp32_forward, make_accelerator
from trainer.accel.timer import peak_memory_mb
from trainer.config import Config, to_yaml
from trainer.core.build import Training, batches_from_config, build
from trainer.core.step import iteration
from trainer.data.toys import TOYS
from trainer.metrics.diagnostics import held_out_gap, layer_gradients, share_above_one
from trainer.nets.layers import class_rows
from trainer.nets.models import parameter_count
from trainer.run import checkpoint
from trainer.run.folder import check_start, claim, finished, release, write_config
from trainer.run.pictures import save_grid, save_toy_plot
from trainer.run.signals import Preempted, StopFlag
from trainer.run.stats import MetricsFile
from trainer.run.tracking import log_checkpoint, log_image, start_tracking, write_summary


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment `cfg`; returns the run folder."""
    stop = StopFlag()  # before any slow start-up work, so an early SIGUSR1/SIGTERM still ends in a checkpoint
    accelerator = make_accelerator(cfg)
    check_start(cfg, accelerator)  # fp16 on a CPU, sizes that cannot fit
    set_seed(cfg.seed)
    with accelerator.main_process_first():  # data problems are reported before the run folder's
        batches = batches_from_config(cfg, accelerator.device, accelerator.process_index, accelerator.num_processes)
    with claim(cfg, accelerator) as (run_dir, resume_from, record):  # lock, checkpoint choice; undone on failure
        if (done := finished(cfg, record, resume_from)) is not None:
            if accelerator.is_main_process:
                print(f"[wgan-gp] {done}", flush=True)
            return run_dir
        t = build(cfg, accelerator, batches)
        if resume_from is not None:
            resume_from, record = checkpoint.load_with_fallback(accelerator, run_dir, resume_from, "path", t.ema)
            t.resume_at(record["step"])
            t.batches.load_state_dict(record["data"])
            if len(record.get("stats", [])) == accelerator.num_processes:  # the log interval's running sums
                t.stats.load_state_dict(record["stats"][accelerator.process_index])
        write_config(cfg, accelerator, run_dir)
    announce(t, run_dir, resume_from)
    try:
        run_loop(t, run_dir, stop)
        write_summary(accelerator, run_dir)
    finally:
        accelerator.end_training()
        release(run_dir)
    return run_dir


def train_step(t: Training, eager: bool = False) -> None:
    """One generator iteration: its learning rates, the iteration, the EMA update, its statistics.

    Under speed.cuda_graph the device work is a graph replay, except on timed steps (one per log interval, whose
    phase timers need device syncs) and when `eager` is asked for (FLOP counting): those run the same math eagerly.
    """
    t.apply_schedule()
    t.guard.at_step = t.state.step
    if t.graph is not None and not (eager or t.timer.enabled):
        records = t.graph()
    else:
        records = iteration(t.state, t.inputs, t.timer.phase)
    if t.ema is not None:
        t.ema.update(t.state.sample)
    for record in records:
        t.stats.add(record | share_above_one(record))
    t.state.step += 1
    t.guard.at_step = t.state.step


def run_loop(t: Training, run_dir: Path, stop: StopFlag) -> None:
    cfg, accelerator = t.cfg, t.accelerator
    metrics = MetricsFile(run_dir / "metrics.jsonl", accelerator.is_main_process, t.step)
    fixed_z = torch.randn(cfg.log.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    bar = tqdm(total=cfg.train.steps, initial=t.step, disable=not accelerator.is_main_process, dynamic_ncols=True)
    clock = (time.perf_counter(), t.step)
    try:  # the bar's line ends before any message, also when the run stops with an error
        while t.step < cfg.train.steps:
            t.timer.enabled = (t.step + 1) % cfg.log.every == 0 or t.step + 1 == cfg.train.steps
            train_step(t)
            t.timer.report(t.stats)
            bar.update(1)
            step, last = t.step, t.step == cfg.train.steps
            scores = maybe_evaluate(t, step, last)
            if step % cfg.log.every == 0 or last or scores:
                t.guard.check()
                record = log_metrics(t, step, clock, metrics, scores)
                clock = (time.perf_counter(), step)
                bar.set_postfix(
                    loss_d=f"{record['loss_d']:.3f}",
                    loss_g=f"{record['loss_g']:.3f}",
                    img_s=f"{record['imgs_per_s']:.0f}",
                )
            if (cfg.log.sample_every and step % cfg.log.sample_every == 0) or last:
                save_samples(t, run_dir / "samples" / f"step-{step:08d}.png", fixed_z)
            signum = stop.agreed(accelerator)
            if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last or signum:
                t.guard.check()  # a run that is skipping every update stops here, before it writes a checkpoint
                save_checkpoint(t, run_dir, step)
            if signum and not last:
                raise Preempted(signum, step)
    finally:
        bar.close()


def maybe_evaluate(t: Training, step: int, last: bool) -> dict[str, float]:
    """eval.* metrics of the EMA (or live) generator every eval.every steps and at the end; all processes together."""
    every = t.cfg.eval.every
    if not every or (step % every and not last):
        return {}
    from trainer.metrics.evaluate import evaluate

    scores = evaluate(t.ema.model if t.ema is not None else t.state.generator, t.cfg, t.accelerator)
    return {**{f"eval_{key}": value for key, value in scores.items()}, "provenance": scores.provenance}


def log_metrics(t: Training, step: int, clock: tuple[float, int], metrics: MetricsFile, scores: dict) -> dict:
    cfg, world = t.cfg, t.accelerator.num_processes
    seconds = time.perf_counter() - clock[0]
    images = (step - clock[1]) * cfg.train.n_critic * cfg.train.batch_size * world
    record = {"step": step, "images_seen": step * cfg.train.n_critic * cfg.train.batch_size * world}
    record.update(t.stats.reduce(t.accelerator))
    record.update(skipped_updates=t.guard.total, peak_mem_mb=peak_memory_mb(t.accelerator.device), **scores)
    record.update(imgs_per_s=images / max(seconds, 1e-9), world_size=world, time=time.time())
    record.update(lr_d=float(t.opt_d.param_groups[0]["lr"]), lr_g=float(t.opt_g.param_groups[0]["lr"]))
    record.update(layer_gradients(t.state.critic, t.state.sample))
    record.update(held_out_gap(t.state.critic, cfg.data.name, cfg.data.image_size, t.accelerator.device))
    metrics.write(record)
    if t.cfg.log.tracker != "none":
        t.accelerator.log({k: v for k, v in record.items() if k != "step" and not isinstance(v, dict)}, step=step)
    return record


@torch.no_grad()
def save_samples(t: Training, path: Path, fixed_z: torch.Tensor) -> None:
    """Main process only: the fixed-noise grid from the EMA generator (or the live one), or the toy scatter."""
    if not t.accelerator.is_main_process:
        return
    net = t.ema.model if t.ema is not None else t.state.sample
    was_training = net.training
    net.eval()
    labels = class_rows(fixed_z.shape[0], t.num_classes).to(t.accelerator.device) if t.num_classes else None
    fake = net(fixed_z.to(t.accelerator.device), labels).float()
    net.train(was_training)
    if t.cfg.data.name in TOYS:
        real = TOYS[t.cfg.data.name](fake.shape[0], generator=torch.Generator().manual_seed(t.cfg.seed + 1))
        critic = partial(fp32_forward, t.state.critic)
        save_toy_plot(fake, real, path, lambda x: critic(x.to(t.accelerator.device)), f"{t.cfg.data.name}, {path.stem}")
    else:
        save_grid(fake, path)
    if t.cfg.log.tracker != "none":
        log_image(t.accelerator, "samples", path, t.step)


def save_checkpoint(t: Training, run_dir: Path, step: int) -> None:
    checkpoint.require_finite({"generator": t.state.generator, "critic": t.state.critic}, step, run_dir)
    export = t.ema.model if t.ema is not None else t.state.sample
    prints = {"generator": fingerprint(t.state.generator), "critic": fingerprint(t.state.critic)}
    mine = {"fingerprints": prints, "stats": t.stats.state_dict()}  # per process
    state = {"data": t.batches.state_dict(), "num_classes": t.num_classes}
    final = checkpoint.save(
        t.accelerator, run_dir, step, state, to_yaml(t.cfg), export, t.ema, mine, t.cfg.checkpoint.keep
    )
    log_checkpoint(t.accelerator, t.cfg, final, step, run_dir)  # W&B artifacts (log.artifacts)


def announce(t: Training, run_dir: Path, resume_from: Optional[Path]) -> None:
    accelerator, step = t.accelerator, t.step
    start_tracking(accelerator, t.cfg, run_dir)
    if accelerator.is_main_process:
        where = f"resuming from {resume_from} at step {step}" if resume_from else "fresh run"
        print(
            f"[wgan-gp] {where}; run folder {run_dir}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}{_threads(accelerator)}, precision {accelerator.mixed_precision}; generator "
            f"{parameter_count(t.state.generator):,} params, critic {parameter_count(t.state.critic):,} params",
            flush=True,
        )


def _threads(accelerator) -> str:
    """On CPU: the torch threads each process uses, and the key that sets them."""
    if accelerator.device.type != "cpu":
        return ""
    return f" ({torch.get_num_threads()} torch threads each; train.cpu_threads sets it)"
