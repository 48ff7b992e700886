"""`python -m trainer.bench [--config FILE] [key=value ...]`: the trainer's step against a plain PyTorch loop."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from trainer.config import Config, load_config, to_dict
from trainer.data import DATASETS, load_images
from trainer.errors import TrainerError
from trainer.flops import count_flops, peak_tflops
from trainer.reference import ReferenceLoop, dataloader_batches
from trainer.batches import ImageBatches
from trainer.ema import EMA
from trainer.losses import LOSSES
from trainer.models import build_models
from trainer.runtime import make_accelerator, prepare_pair
from trainer.speed import apply_speed, float32_modes, tf32_modes
from trainer.stats import Stats
from trainer.steps import NonFiniteGuard, Parts, PhaseTimer, critic_step, generator_step, make_optimizers

CONTENDERS = ("trainer", "reference")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__)
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml); overrides come after it")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per contender (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender, alternating")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="target length of one timed round")
    parser.add_argument("--split-steps", type=int, default=3, help="extra steps timed per phase (device syncs)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = train.cpu_threads or all cores")
    parser.add_argument("--synthetic", type=int, default=0, help="N random uint8 images instead of data.name's")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for the fraction; 0 = table")
    parser.add_argument("--out", default="bench.json", help="JSON result file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser.parse_intermixed_args(argv)


def bench_images(cfg: Config, synthetic: int) -> torch.Tensor:
    """uint8 (N, C, S, S) host images for both contenders: the dataset's, or `synthetic` random ones of its shape."""
    spec = DATASETS[cfg.data.name]
    if spec.is_toy or cfg.model.conditional:
        raise TrainerError("the benchmark compares unconditional image models; pick an image dataset and preset.")
    if synthetic:
        shape = (synthetic, spec.channels, cfg.data.image_size, cfg.data.image_size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(cfg.seed))
    if spec.load is None:
        raise TrainerError(f"data.name={cfg.data.name} is streamed from files; benchmark it with --synthetic 50000.")
    try:
        return load_images(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.image_size)
    except TrainerError as err:
        raise TrainerError(f"{err} Offline, --synthetic 60000 gives random images of the same shape.") from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step`, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    """Peak tensor memory on a GPU (since the last reset); on CPU the process's peak resident set (both contenders)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainerStep:
    """The trainer's step as trainer.loop runs it (same construction order), on the bench's images held on device."""

    def __init__(self, cfg: Config, images: torch.Tensor) -> None:
        self.accelerator = accelerator = make_accelerator(cfg)
        self.device, self.world = accelerator.device, accelerator.num_processes
        self.precision = accelerator.mixed_precision
        rank, batch = accelerator.process_index, cfg.train.batch_size
        batches = ImageBatches(images.to(self.device), batch, rank, self.world, cfg.seed)
        torch.manual_seed(cfg.seed)
        channels = DATASETS[cfg.data.name].channels
        generator, critic = build_models(cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, images.shape[-1])
        ema = EMA(generator, cfg.train.ema_decay).to(self.device) if cfg.train.ema_decay > 0 else None
        apply_speed(cfg, generator, critic)
        spec = LOSSES[cfg.loss.name]
        opt_g, opt_d = make_optimizers(cfg, spec, generator, critic)
        generator, critic, opt_g, opt_d = prepare_pair(accelerator, generator, critic, opt_g, opt_d)
        guard = NonFiniteGuard(cfg.train.max_nonfinite)
        self.parts = Parts(cfg, accelerator, spec, generator, critic, opt_g, opt_d, batches, ema, Stats(), 0, guard)

    def step(self, timer: Optional[PhaseTimer] = None) -> None:
        """n_critic critic steps and one generator step, as in trainer.loop.run_loop."""
        p = self.parts
        p.timer = timer or PhaseTimer()
        with p.timer.phase("critic", self.device):
            for _ in range(p.cfg.train.n_critic):
                critic_step(p)
        with p.timer.phase("generator", self.device):
            generator_step(p)
        p.step += 1


class Contender:
    """One side of the race: its step function, the float32 modes it runs under, and what was measured."""

    def __init__(self, name: str, step: Callable[[Optional[PhaseTimer]], None], modes: tuple[str, str]) -> None:
        self.name, self.step_with, self.modes = name, step, modes
        self.seconds_per_step: list[float] = []
        self.peak_mb, self.split_ms, self.flops = 0.0, {}, 0

    def run(self, steps: int, device: torch.device) -> float:
        with float32_modes(self.modes):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(lambda: self.step_with(None), steps, device)
            self.peak_mb = max(self.peak_mb, peak_memory_mb(device))
        return seconds

    def split(self, steps: int, device: torch.device) -> None:
        timer = PhaseTimer()
        with float32_modes(self.modes):
            for _ in range(steps):
                timer.enabled = True
                self.step_with(timer)
        penalty = timer.ms.get("penalty", 0.0)
        critic, generator = timer.ms.get("critic", 0.0) - penalty, timer.ms.get("generator", 0.0)
        self.split_ms = {"critic": critic / steps, "penalty": penalty / steps, "generator": generator / steps}

    def count(self) -> None:
        with float32_modes(self.modes):
            self.flops = count_flops(lambda: self.step_with(None))


def race(contenders: list[Contender], args: argparse.Namespace, device: torch.device) -> None:
    """Warm-up, calibration of steps per round, then rounds alternating A, B, A, B, ..., the phase split, FLOPs."""
    per_round = {}
    for c in contenders:
        seconds = c.run(max(args.warmup, 1), device)
        per_round[c.name] = max(1, round(args.round_seconds * max(args.warmup, 1) / max(seconds, 1e-9)))
    for _ in range(args.rounds):
        for c in contenders:
            c.seconds_per_step.append(c.run(per_round[c.name], device) / per_round[c.name])
    for c in contenders:
        c.split(max(args.split_steps, 1), device)
        c.count()


def summary(c: Contender, cfg: Config, peak: Optional[float], world: int) -> dict:
    it_per_s = 1 / statistics.median(c.seconds_per_step)
    total = sum(c.split_ms.values())
    return {
        "gen_it_per_s": it_per_s,
        "critic_img_per_s": it_per_s * cfg.train.n_critic * cfg.train.batch_size * world,
        "ms_per_step": 1000 / it_per_s,
        "time_split_ms": c.split_ms,
        "penalty_share": c.split_ms["penalty"] / total if total else 0.0,
        "peak_mem_mb": c.peak_mb,
        "flops_per_step": c.flops,
        "achieved_tflops": c.flops * it_per_s / 1e12,
        "fraction_of_peak": c.flops * it_per_s / (peak * 1e12) if peak else None,
        "rounds_it_per_s": [1 / s for s in c.seconds_per_step],
    }


def build(cfg: Config, images: torch.Tensor, threads: int) -> tuple[TrainerStep, ReferenceLoop]:
    trainer = TrainerStep(cfg, images)
    torch.set_num_threads(threads or cfg.train.cpu_threads or os.cpu_count() or 1)  # after make_accelerator's choice
    batch = cfg.train.batch_size
    return trainer, ReferenceLoop(cfg, trainer.device, dataloader_batches(images, batch, cfg.seed))


def result(cfg: Config, args: argparse.Namespace, trainer: TrainerStep, contenders: list[Contender]) -> dict:
    device = trainer.device
    peak, basis = peak_tflops(device, trainer.precision, cfg.speed.tf32, args.peak_tflops)
    out = {c.name: summary(c, cfg, peak, trainer.world) for c in contenders}
    ratios = [r / t for t, r in zip(*(c.seconds_per_step for c in contenders), strict=True)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "speedup": statistics.median(ratios),  # median over rounds of reference time / trainer time per step
        "speedup_of_medians": out["trainer"]["gen_it_per_s"] / out["reference"]["gen_it_per_s"],
        **out,
        "device": name,
        "precision": trainer.precision,
        "threads": torch.get_num_threads(),
        "world_size": trainer.world,
        "peak_tflops": peak,
        "peak_basis": basis,
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "synthetic_images": args.synthetic,
        "config": to_dict(cfg),
    }


def print_table(res: dict) -> None:
    t, r = res["trainer"], res["reference"]
    rows = [
        ("generator it/s", "gen_it_per_s", "{:.2f}"),
        ("critic images/s", "critic_img_per_s", "{:.0f}"),
        ("ms per generator step", "ms_per_step", "{:.2f}"),
        ("peak memory MB", "peak_mem_mb", "{:.0f}"),
        ("GFLOP per step", "flops_per_step", "{:.3g}"),
        ("achieved TFLOP/s", "achieved_tflops", "{:.3g}"),
    ]
    print(f"device {res['device']} ({res['threads']} threads), trainer precision {res['precision']}")
    print(f"{'':24}{'trainer':>14}{'reference':>14}")
    for label, key, fmt in rows:
        scale = 1e-9 if key == "flops_per_step" else 1
        print(f"{label:24}{fmt.format(t[key] * scale):>14}{fmt.format(r[key] * scale):>14}")
    for side in (t, r):
        side["split_text"] = " / ".join(f"{side['time_split_ms'][k]:.2f}" for k in ("critic", "penalty", "generator"))
    print(f"{'critic/penalty/gen ms':24}{t.pop('split_text'):>14}{r.pop('split_text'):>14}")
    if res["peak_tflops"]:
        frac = f"{t['fraction_of_peak']:.1%}", f"{r['fraction_of_peak']:.1%}"
        print(f"{'fraction of peak':24}{frac[0]:>14}{frac[1]:>14}  ({res['peak_basis']})")
    print(f"speedup {res['speedup']:.2f}x (median of per-round ratios; {res['speedup_of_medians']:.2f}x of medians)")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, tuple(args.overrides))
        images = bench_images(cfg, args.synthetic)
        defaults = tf32_modes()  # PyTorch's float32 modes, before cfg.speed.tf32 sets the trainer's
        trainer, reference = build(cfg, images, args.threads)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    contenders = [Contender("trainer", trainer.step, tf32_modes()), Contender("reference", reference.step, defaults)]
    race(contenders, args, trainer.device)
    res = result(cfg, args, trainer, contenders)
    print_table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
