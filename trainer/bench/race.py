"""`python -m trainer.bench [--config FILE] [key=value ...]`: the trainer's step raced against a plain PyTorch loop."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from trainer.accel.runtime import make_accelerator
from trainer.accel.speed import cudnn_benchmark, float32_modes, tf32_modes
from trainer.accel.timer import PhaseTimer, peak_memory_mb, sync
from trainer.bench.reference import ReferenceLoop, dataloader_batches
from trainer.config import Config, to_dict
from trainer.core.build import build
from trainer.core.gate import configure
from trainer.core.loop import train_step
from trainer.data.batches import ImageBatches
from trainer.data.registry import DATASETS, load_images
from trainer.errors import TrainerError
from trainer.metrics.flops import count_flops, peak_tflops


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__)
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml); overrides come after it")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per contender (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender, alternating A, B, A, B")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="target length of one timed round")
    parser.add_argument("--split-steps", type=int, default=3, help="extra steps timed phase by phase (device syncs)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = train.cpu_threads or all cores")
    parser.add_argument("--synthetic", type=int, default=0, help="N random uint8 images instead of data.name's")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for the fraction; 0 = table")
    parser.add_argument("--against", default="", help="'k=v ...': race the trainer with these overrides instead")
    parser.add_argument("--out", default="runs/bench/bench.json", help="JSON result file (default runs/bench/)")
    parser.add_argument("--baseline", help="a 1-process bench JSON of the same config: report scaling efficiency")
    parser.add_argument("--contention", type=int, default=0, metavar="N",
                        help="instead of the race: train.py quiet and beside N busy processes, both OpenMP wait "
                        "policies (trainer.bench.contention)")  # fmt: skip
    parser.add_argument("--contention-steps", type=int, default=60, help="generator steps of each --contention run")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser.parse_intermixed_args(argv)


def bench_images(cfg: Config, synthetic: int) -> torch.Tensor:
    """uint8 (N, C, S, S) host images for both contenders: the dataset's, or `synthetic` random ones of its shape."""
    spec = DATASETS[cfg.data.name]
    if spec.is_toy or cfg.model.conditional:
        raise TrainerError("the benchmark races unconditional image models; pick an image dataset and preset.")
    if synthetic:
        shape = (synthetic, spec.channels, cfg.data.image_size, cfg.data.image_size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(cfg.seed))
    if spec.load is None:
        raise TrainerError(f"data.name={cfg.data.name} is streamed from files; benchmark it with --synthetic 50000.")
    try:
        return load_images(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.image_size)
    except TrainerError as err:
        raise TrainerError(f"{err} Offline, --synthetic 60000 races on random images of the same shape.") from None


class TrainerStep:
    """The trainer's step as trainer.core.build builds it and trainer.core.loop runs it, on `images` on the device."""

    def __init__(self, cfg: Config, images: torch.Tensor) -> None:
        self.accelerator = accelerator = make_accelerator(cfg)
        self.device, self.world = accelerator.device, accelerator.num_processes
        self.precision = accelerator.mixed_precision
        rank, batch = accelerator.process_index, cfg.train.batch_size
        batches = ImageBatches(images.to(self.device), batch, rank, self.world, cfg.seed)
        self.training = build(cfg, accelerator, batches)
        self.timer = self.training.timer
        self.modes = tf32_modes()  # what cfg.speed.tf32 set; restored around each of this contender's runs

    def step(self, timed: bool = False, eager: bool = False) -> None:
        """One generator iteration exactly as trainer.core.loop.run_loop runs it (a graph replay under
        speed.cuda_graph, except on `timed` steps, whose phases the trainer's own timer measures)."""
        self.timer.enabled = timed
        train_step(self.training, eager)
        self.timer.enabled = False


class Contender:
    """One side of the race: its step, the float32 (TF32) modes it runs under, and what was measured."""

    def __init__(
        self,
        name: str,
        step: Callable,
        timer: PhaseTimer,
        modes: tuple[str, str],
        device: torch.device,
        benchmark: bool = False,
    ) -> None:
        self.name, self.step, self.timer, self.modes, self.device = name, step, timer, modes, device
        self.benchmark = benchmark  # torch.backends.cudnn.benchmark while this contender runs
        self.seconds_per_step: list[float] = []
        self.cpu_seconds_per_step: list[float] = []  # this process's CPU time: robust to other users' load at 1 thread
        self.peak_mb, self.split_ms, self.flops = 0.0, {}, 0
        self.warmup_seconds = 0.0  # the untimed first steps: compilation, cuDNN plans, a CUDA graph's warm-up

    def run(self, steps: int) -> tuple[float, float]:
        """(wall, process CPU) seconds for `steps` steps, the device drained before and after."""
        with float32_modes(self.modes), cudnn_benchmark(self.benchmark):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            sync(self.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                self.step()
            sync(self.device)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))
        return seconds, cpu_seconds

    def split(self, steps: int) -> None:
        """Milliseconds per step in critic (without the penalty), penalty (forward + input gradient), generator."""
        self.timer.reset()
        with float32_modes(self.modes), cudnn_benchmark(self.benchmark):
            for _ in range(steps):
                self.step(timed=True)
        split = self.timer.split()
        self.timer.reset()
        self.split_ms = {k: split[f"time_{k}_ms"] / steps for k in ("critic", "penalty", "generator")}

    def count(self) -> None:
        """FLOPs of one step, run eagerly (a CUDA graph replay dispatches no operators to count)."""
        with float32_modes(self.modes), cudnn_benchmark(self.benchmark):
            self.flops = count_flops(lambda: self.step(eager=True))


def agreed(steps: int, device: torch.device) -> int:
    """The largest of the processes' step counts: under DDP every process must run as many steps as the others."""
    if not torch.distributed.is_initialized():
        return steps
    count = torch.tensor([steps], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count.item())


def race(contenders: list[Contender], args: argparse.Namespace) -> None:
    """Warm-up, steps per round calibrated to --round-seconds, rounds alternating A, B, A, B; then split and FLOPs."""
    per_round, warmup = {}, max(args.warmup, 1)
    for c in contenders:
        c.warmup_seconds = c.run(warmup)[0]
        per_round[c.name] = agreed(max(1, round(args.round_seconds * warmup / max(c.warmup_seconds, 1e-9))), c.device)
    for _ in range(args.rounds):
        for c in contenders:
            seconds, cpu_seconds = c.run(per_round[c.name])
            c.seconds_per_step.append(seconds / per_round[c.name])
            c.cpu_seconds_per_step.append(cpu_seconds / per_round[c.name])
    for c in contenders:
        c.split(max(args.split_steps, 1))
        c.count()


def summary(c: Contender, cfg: Config, peak: Optional[float], world: int) -> dict:
    it_per_s = 1 / statistics.median(c.seconds_per_step)
    total = sum(c.split_ms.values())
    return {
        "gen_it_per_s": it_per_s,
        "critic_img_per_s": it_per_s * cfg.train.n_critic * cfg.train.batch_size * world,
        "ms_per_step": 1000 / it_per_s,
        "cpu_ms_per_step": 1000 * statistics.median(c.cpu_seconds_per_step),
        "time_split_ms": c.split_ms,
        "penalty_share": c.split_ms["penalty"] / total if total else 0.0,
        "peak_mem_mb": c.peak_mb,
        "flops_per_step": c.flops,
        "achieved_tflops": c.flops * it_per_s / 1e12,
        "fraction_of_peak": c.flops * it_per_s / (peak * 1e12) if peak else None,
        "rounds_it_per_s": [1 / s for s in c.seconds_per_step],
        "fp32_modes": dict(zip(("matmul", "conv"), c.modes, strict=True)),  # CUDA's TF32 use: tf32, ieee, none
        "cudnn_benchmark": c.benchmark,
        "warmup_s": c.warmup_seconds,
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of b / a: each pair ran back to back, so slow drifts in the machine's load cancel."""
    return statistics.median(sb / sa for sa, sb in zip(a, b, strict=True))


def result(cfg: Config, args: argparse.Namespace, trainer: TrainerStep, contenders: list[Contender]) -> dict:
    device, (a, b) = trainer.device, contenders
    peak, basis = peak_tflops(device, trainer.precision, cfg.speed.tf32 is not False, args.peak_tflops)
    return {
        "speedup": paired_ratio(a.seconds_per_step, b.seconds_per_step),  # B's time per step / A's (the trainer's)
        "speedup_of_medians": statistics.median(b.seconds_per_step) / statistics.median(a.seconds_per_step),
        "speedup_cpu_time": paired_ratio(a.cpu_seconds_per_step, b.cpu_seconds_per_step),
        "contenders": [c.name for c in contenders],
        **{c.name: summary(c, cfg, peak, trainer.world) for c in contenders},
        "against": args.against or None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": trainer.precision,
        "threads": torch.get_num_threads(),
        "world_size": trainer.world,
        "peak_tflops": peak,
        "peak_basis": basis,
        "peak_mem_basis": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (shared)",
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "synthetic_images": args.synthetic,
        "config": to_dict(cfg),
        "scaling": scaling(a, cfg, load_baseline(args.baseline, cfg)),
    }


def load_baseline(path: Optional[str], cfg: Config) -> Optional[dict]:
    """The 1-process result --baseline names, refused unless it ran this very config."""
    if not path:
        return None
    try:
        single = json.loads(Path(path).read_text())
        same = single["world_size"] == 1 and single["config"] == to_dict(cfg)
    except (OSError, ValueError, KeyError) as err:
        raise TrainerError(f"--baseline {path} cannot be read as a bench result ({err}).") from None
    if not same:
        raise TrainerError(f"--baseline {path} is not a 1-process run of this config: rerun it without torchrun.")
    return single


def scaling(trainer: Contender, cfg: Config, baseline: Optional[dict]) -> dict:
    """Every process's own throughput (collective: all processes call it), their sum, and with a 1-process result
    of the same config the weak-scaling efficiency: mean per-process it/s over the single process's it/s."""
    mine = 1 / statistics.median(trainer.seconds_per_step)
    per_rank = [mine]
    if torch.distributed.is_initialized():
        per_rank = [0.0] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, mine)
    images = cfg.train.n_critic * cfg.train.batch_size
    out = {"per_rank_gen_it_per_s": per_rank, "aggregate_critic_img_per_s": sum(per_rank) * images}
    if baseline:
        one = baseline["trainer"]["gen_it_per_s"]
        out.update(baseline_gen_it_per_s=one, efficiency=statistics.mean(per_rank) / one)
    return out


ROWS = [
    ("generator it/s", "gen_it_per_s", "{:.2f}", 1),
    ("critic images/s", "critic_img_per_s", "{:.0f}", 1),
    ("ms per generator step", "ms_per_step", "{:.2f}", 1),
    ("CPU ms per step (process)", "cpu_ms_per_step", "{:.2f}", 1),
    ("penalty share of step", "penalty_share", "{:.1%}", 1),
    ("peak memory MB", "peak_mem_mb", "{:.0f}", 1),
    ("GFLOP per step", "flops_per_step", "{:.3g}", 1e-9),
    ("achieved TFLOP/s", "achieved_tflops", "{:.3g}", 1),
    ("warm-up s (untimed steps)", "warmup_s", "{:.1f}", 1),
]


def print_table(res: dict) -> None:
    """The two contenders side by side; every column is at least two spaces wider than its widest cell."""
    sides = [res[name] for name in res["contenders"]]
    rows = [(label, [fmt.format(s[key] * scale) for s in sides]) for label, key, fmt, scale in ROWS]
    split = [" / ".join(f"{s['time_split_ms'][k]:.1f}" for k in ("critic", "penalty", "generator")) for s in sides]
    rows.append(("critic/penalty/gen ms", split))
    if res["peak_tflops"]:
        rows.append(("fraction of peak", [f"{s['fraction_of_peak']:.1%}" for s in sides]))
    width = max(len(cell) for _, cells in [("", res["contenders"]), *rows] for cell in cells) + 2
    print(f"device {res['device']} ({res['threads']} threads), trainer precision {res['precision']}")
    for label, cells in [("", res["contenders"]), *rows]:
        print(f"{label:26}" + "".join(f"{cell:>{width}}" for cell in cells))
    if res["peak_tflops"]:
        print(f"  peak {res['peak_tflops']} TFLOP/s: {res['peak_basis']}")
    b, ratio, of_medians, cpu = res["contenders"][1], res["speedup"], res["speedup_of_medians"], res["speedup_cpu_time"]
    print(
        f"trainer vs {b}: {ratio:.2f}x (median of per-round ratios; {of_medians:.2f}x of medians; CPU time {cpu:.2f}x)"
    )
    s = res["scaling"]
    if len(s["per_rank_gen_it_per_s"]) > 1 or "efficiency" in s:
        ranks = ", ".join(f"{x:.2f}" for x in s["per_rank_gen_it_per_s"])
        line = f"{len(s['per_rank_gen_it_per_s'])} processes: it/s per process {ranks}; "
        line += f"{s['aggregate_critic_img_per_s']:.0f} critic images/s in all"
        if "efficiency" in s:
            line += f"; efficiency {s['efficiency']:.1%} of the 1-process {s['baseline_gen_it_per_s']:.2f} it/s"
        print(line)


def contenders_for(cfg: Config, args: argparse.Namespace, images: torch.Tensor) -> tuple[TrainerStep, list]:
    defaults = tf32_modes()  # PyTorch's float32 modes, before a trainer's cfg.speed.tf32 sets its own
    trainer = TrainerStep(cfg, images)
    if args.against:
        other_cfg = configure(args.config, (*args.overrides, *args.against.split()))
        other = TrainerStep(other_cfg, images)
        b = Contender("baseline", other.step, other.timer, other.modes, other.device, other_cfg.speed.cudnn_benchmark)
    else:
        data = dataloader_batches(images, cfg.train.batch_size, cfg.seed)
        reference = ReferenceLoop(cfg, trainer.device, data)
        timer = PhaseTimer(trainer.device)
        step = partial(_reference_step, reference, timer)
        b = Contender("reference", step, timer, defaults, trainer.device)
    torch.set_num_threads(args.threads or cfg.train.cpu_threads or os.cpu_count() or 1)  # the same for both
    a = Contender("trainer", trainer.step, trainer.timer, trainer.modes, trainer.device, cfg.speed.cudnn_benchmark)
    return trainer, [a, b]


def _reference_step(reference: ReferenceLoop, timer: PhaseTimer, timed: bool = False, eager: bool = False) -> None:
    timer.enabled = timed
    reference.step(timer)
    timer.enabled = False


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.contention:
        from trainer.bench import contention

        overrides = [*(["--config", args.config] if args.config else []), *args.overrides]
        res = contention.main(args.contention, args.contention_steps, overrides)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    try:
        cfg = configure(args.config, tuple(args.overrides))
        load_baseline(args.baseline, cfg)  # refused before any work
        trainer, contenders = contenders_for(cfg, args, bench_images(cfg, args.synthetic))
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    race(contenders, args)
    res = result(cfg, args, trainer, contenders)
    if not trainer.accelerator.is_main_process:  # under DDP every rank races; the main one reports
        return 0
    print_table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
