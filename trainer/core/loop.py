"""The training loop: n_critic critic steps, one generator step, then bookkeeping (EMA, log, samples, checkpoint)."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer.accel.runtime import fp32_forward, make_accelerator
from trainer.accel.timer import peak_memory_mb
from trainer.config import Config
from trainer.core.build import Training, batches_from_config, build
from trainer.core.gate import environment
from trainer.core.step import iteration
from trainer.data.toys import TOYS
from trainer.errors import TrainerError
from trainer.metrics.diagnostics import held_out_gap, layer_gradients, share_above_one
from trainer.nets.layers import class_rows
from trainer.nets.models import parameter_count
from trainer.run import checkpoint, report
from trainer.run.folder import claim, forget_if_nothing_kept, nothing_to_train, release, write_config
from trainer.run.pictures import save_grid, save_toy_plot
from trainer.run.signals import Preempted, StopFlag
from trainer.run.stats import MetricsFile
from trainer.run.tracking import log_checkpoint, log_image, read_records, start_tracking, write_summary


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment `cfg`; returns the run folder."""
    stop = StopFlag()  # before any slow start-up work, so an early SIGUSR1/SIGTERM still ends in a checkpoint
    accelerator = make_accelerator(cfg)
    environment(cfg, accelerator)  # fp16 on a CPU, sizes that cannot fit
    set_seed(cfg.seed)
    with accelerator.main_process_first():  # data problems are reported before the run folder's
        batches = batches_from_config(cfg, accelerator.device, accelerator.process_index, accelerator.num_processes)
    created = not Path(cfg.run.dir).exists()
    with claim(cfg, accelerator) as (run_dir, resume_from, record):  # lock, checkpoint choice; undone on failure
        if (done := nothing_to_train(cfg, record, resume_from)) is not None:
            if accelerator.is_main_process:
                print(f"[wgan-gp] {done}", flush=True)
            return run_dir
        training = build(cfg, accelerator, batches)
        if resume_from is not None:  # falls back past a checkpoint that verifies but cannot be loaded (latest)
            resume_from, record = checkpoint.load_with_fallback(
                accelerator, run_dir, resume_from, cfg.run.resume, training.ema
            )
            training.load_state_dict(record)
            announce_world_change(cfg, accelerator, record)
        write_config(cfg, accelerator, run_dir, training.plan.comment())
    failed = True
    try:
        announce(training, run_dir, resume_from)
        started = (time.perf_counter(), training.step)
        run_loop(training, run_dir, stop)
        write_summary(accelerator, run_dir)
        finish(training, run_dir, started)
        failed = False
    finally:
        accelerator.end_training()
        release(run_dir)
        if failed and created and accelerator.is_main_process:  # a start that failed leaves no folder it made
            forget_if_nothing_kept(run_dir)
    return run_dir


def announce_world_change(cfg: Config, accelerator, record: dict) -> None:
    """A resume with another number of processes continues the weights, optimizer state and step, but not the run it
    would have been: said once, with what changes."""
    then, now = int(record.get("world_size", 1)), accelerator.num_processes
    if then == now or not accelerator.is_main_process:
        return
    b = cfg.train.batch_size
    print(
        f"[wgan-gp] resuming a {then}-process checkpoint with {now} processes: the weights, optimizer moments and step "
        f"continue, but the global critic batch becomes {now} x {b} = {now * b} (was {then * b}), each process's share "
        f"of the data order and its noise stream (seed + rank) differ, so the run is no longer the one {then} "
        f"processes would have trained. The log interval's running statistics restart.",
        flush=True,
    )


def train_step(training: Training, eager: bool = False) -> None:
    """One generator iteration: its learning rates, the iteration, the EMA update, its statistics.

    Under speed.cuda_graph the device work is a graph replay, except on timed steps (one per log interval, whose
    phase timers need device syncs) and when `eager` is asked for (FLOP counting): those run the same math eagerly.
    """
    training.apply_schedule()
    if training.graph is not None and not (eager or training.timer.enabled):
        records = training.graph()
    else:
        records = iteration(training.parts, training.inputs, training.timer.phase)
    if training.ema is not None:
        training.ema.update(training.parts.generator_raw)
    for record in records:
        training.stats.add(record | share_above_one(record))
    training.parts.clock.step += 1


def run_loop(training: Training, run_dir: Path, stop: StopFlag) -> None:
    cfg, accelerator = training.cfg, training.accelerator
    metrics = MetricsFile(run_dir / "metrics.jsonl", accelerator.is_main_process, training.step)
    fixed_z = torch.randn(cfg.log.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    # A terminal gets tqdm's bar; a log file (SLURM, nohup, CI) one plain line per log interval, no carriage returns.
    mode = cfg.log.progress if cfg.log.progress != "auto" else ("bar" if sys.stderr.isatty() else "lines")
    plain = accelerator.is_main_process and mode == "lines"
    bar = tqdm(
        total=cfg.train.steps,
        initial=training.step,
        disable=not accelerator.is_main_process or plain,
        dynamic_ncols=True,
    )
    clock = started = (time.perf_counter(), training.step)
    try:  # the bar's line ends before any message, also when the run stops with an error
        while training.step < cfg.train.steps:
            training.timer.enabled = (training.step + 1) % cfg.log.every == 0 or training.step + 1 == cfg.train.steps
            train_step(training)
            training.timer.report(training.stats)
            bar.update(1)
            step, last = training.step, training.step == cfg.train.steps
            scores = maybe_evaluate(training, step, last)
            if step % cfg.log.every == 0 or last or scores:
                training.guard.check()
                record = log_metrics(training, step, clock, metrics, scores)
                clock = (time.perf_counter(), step)
                bar.set_postfix(
                    loss_d=f"{record['loss_d']:.3f}",
                    loss_g=f"{record['loss_g']:.3f}",
                    img_s=f"{record['imgs_per_s']:.0f}",
                )
                if plain:
                    print(progress_line(record, cfg.train.steps, started), flush=True)
            if (cfg.log.sample_every and step % cfg.log.sample_every == 0) or last:
                save_samples(training, run_dir / "samples" / f"step-{step:08d}.png", fixed_z)
            signum = stop.agreed(accelerator)
            if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last or signum:
                training.guard.check()  # a run that is skipping every update stops here, before it writes a checkpoint
                save_checkpoint(training, run_dir, step)
            if signum and not last:
                raise Preempted(signum, step)
    finally:
        bar.close()


def progress_line(record: dict, steps: int, started: tuple[float, int]) -> str:
    """One log interval as a plain line: step, losses, the Wasserstein estimate, throughput, time left."""
    step, (t0, step0) = record["step"], started
    rate = (step - step0) / max(time.perf_counter() - t0, 1e-9)
    left = (steps - step) / max(rate, 1e-9)
    w = f" wasserstein {record['wasserstein']:.4f}" if "wasserstein" in record else ""
    return (
        f"[wgan-gp] step {step}/{steps} ({step / steps:.0%}): loss_d {record['loss_d']:.4f} loss_g "
        f"{record['loss_g']:.4f}{w}, {rate:.2f} it/s, {record['imgs_per_s']:.0f} img/s, {left / 60:.1f} min left"
    )


def maybe_evaluate(training: Training, step: int, last: bool) -> dict[str, float]:
    """eval.* metrics of the EMA (or live) generator every eval.every steps and at the end; all processes together."""
    every = training.cfg.eval.every
    if not every or (step % every and not last):
        return {}
    from trainer.metrics.evaluate import evaluate

    generator = training.ema.model if training.ema is not None else training.parts.generator
    scores = evaluate(generator, training.cfg, training.accelerator)
    return {**{f"eval_{key}": value for key, value in scores.items()}, "provenance": scores.provenance}


def log_metrics(training: Training, step: int, clock: tuple[float, int], metrics: MetricsFile, scores: dict) -> dict:
    cfg, world = training.cfg, training.accelerator.num_processes
    seconds = time.perf_counter() - clock[0]
    images = (step - clock[1]) * cfg.train.n_critic * cfg.train.batch_size * world
    record = {"step": step, "images_seen": step * cfg.train.n_critic * cfg.train.batch_size * world}
    record.update(training.stats.reduce(training.accelerator))
    record.update(
        skipped_updates=training.guard.total, peak_mem_mb=peak_memory_mb(training.accelerator.device), **scores
    )
    record.update(imgs_per_s=images / max(seconds, 1e-9), world_size=world, time=time.time())
    record.update(lr_d=float(training.opt_d.param_groups[0]["lr"]), lr_g=float(training.opt_g.param_groups[0]["lr"]))
    record.update(layer_gradients(training.parts.critic, training.parts.generator_raw))
    critic, device = training.parts.critic, training.accelerator.device
    record.update(held_out_gap(critic, cfg.data.name, cfg.data.image_size, device, root=cfg.data.root))
    metrics.write(record)
    if training.cfg.log.tracker != "none":
        training.accelerator.log(
            {k: v for k, v in record.items() if k != "step" and not isinstance(v, dict)}, step=step
        )
    return record


@torch.no_grad()
def save_samples(training: Training, path: Path, fixed_z: torch.Tensor) -> None:
    """Main process only: the fixed-noise grid from the EMA generator (or the live one), or the toy scatter."""
    if not training.accelerator.is_main_process:
        return
    cfg, device, net = training.cfg, training.accelerator.device, training.sampler
    was_training = net.training
    net.eval()
    labels = class_rows(fixed_z.shape[0], training.num_classes).to(device) if training.num_classes else None
    fake = net(fixed_z.to(device), labels).float()
    net.train(was_training)
    if cfg.data.name in TOYS:
        real = TOYS[cfg.data.name](fake.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 1))
        critic = partial(fp32_forward, training.parts.critic)
        save_toy_plot(fake, real, path, lambda x: critic(x.to(device)), f"{cfg.data.name}, {path.stem}")
    else:
        save_grid(fake, path)
    if training.cfg.log.tracker != "none":
        log_image(training.accelerator, "samples", path, training.step)


def save_checkpoint(training: Training, run_dir: Path, step: int) -> None:
    checkpoint.require_finite({"generator": training.parts.generator, "critic": training.parts.critic}, step, run_dir)
    final = checkpoint.save(training.accelerator, run_dir, training.state_dict(), training.cfg.checkpoint.keep)
    log_checkpoint(training.accelerator, training.cfg, final, step, run_dir)  # W&B artifacts (log.artifacts)


def finish(training: Training, run_dir: Path, started: tuple[float, int]) -> None:
    """The end of a run: the quality figure (all processes), then on the main process curves.png, the last grid
    beside real images, summary.json's "run" and the lines that say where everything is."""
    cfg, accelerator = training.cfg, training.accelerator
    seconds, steps = time.perf_counter() - started[0], training.step - started[1]
    score = None
    if cfg.eval.at_end:
        try:
            score = report.quality(training.sampler, cfg, accelerator.device)
        except (TrainerError, OSError, RuntimeError, ValueError) as err:  # the run is complete and saved
            if accelerator.is_main_process:
                print(
                    f"[wgan-gp] warning: no quality figure at the end ({err}); eval.at_end=false skips it", flush=True
                )
    if not accelerator.is_main_process:
        return
    records = read_records(run_dir)
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    real = report.real_images(cfg.data.name, cfg.data.root, cfg.data.image_size, cfg.log.num_samples)
    with torch.no_grad():
        fixed_z = torch.randn(cfg.log.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        labels = class_rows(fixed_z.shape[0], training.num_classes) if training.num_classes else None
        fake = draw_samples(training, fixed_z, labels)
    files = {
        "last_grid": grids[-1] if grids else None,
        "beside_real": report.beside_real(fake, real, run_dir / "samples" / report.BESIDE_REAL),
        "curves": report.plot_curves(records, run_dir / report.CURVES, f"{cfg.data.name}, {cfg.model.name}"),
        "checkpoint": (checkpoint.list_checkpoints(run_dir) or [None])[-1],
    }
    s = report.summary(run_dir, records, seconds, steps, files, score)
    report.write_run_summary(run_dir, s)
    print("\n".join(report.lines(run_dir, s, cfg.data.name)), flush=True)


def draw_samples(training: Training, z: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The sampler's images of z (eval mode, restored), on the host."""
    device, net = training.accelerator.device, training.sampler
    was_training = net.training
    net.eval()
    fake = net(z.to(device), None if labels is None else labels.to(device)).float().cpu()
    net.train(was_training)
    return fake


def announce(training: Training, run_dir: Path, resume_from: Optional[Path]) -> None:
    accelerator, step, parts = training.accelerator, training.step, training.parts
    start_tracking(accelerator, training.cfg, run_dir, training.plan.as_dict())
    if accelerator.is_main_process:
        where = f"resuming from {resume_from} at step {step}" if resume_from else "fresh run"
        print(
            f"[wgan-gp] {where}; run folder {run_dir}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device.type}{_threads(accelerator)}, precision {accelerator.mixed_precision}; generator "
            f"{parameter_count(parts.generator):,} params, critic {parameter_count(parts.critic):,} params",
            flush=True,
        )
        print(f"[wgan-gp] {training.plan.describe()}", flush=True)


def _threads(accelerator) -> str:
    """On CPU: the torch threads each process uses, and the key that sets them."""
    if accelerator.device.type != "cpu":
        return ""
    return f" ({torch.get_num_threads()} torch threads each; train.cpu_threads sets it)"
