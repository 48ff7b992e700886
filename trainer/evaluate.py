"""`python -m trainer.evaluate RUN_DIR`: a checkpoint's sample-quality metrics as JSON (trainer.metrics.evaluate)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch
from accelerate import PartialState

from trainer.errors import TrainerError
from trainer.metrics.evaluate import evaluate, family
from trainer.metrics.moments import rank_world
from trainer.run import checkpoint
from trainer.sample import find_checkpoint, load_generator

DEFAULT_NUM = {"toy": 2000, "classifier": 10_000, "inception": 10_000}  # --num by metric family


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of the run's latest")
    parser.add_argument("--num", type=int, help="generated samples (default: toys 2000, images 10000)")
    parser.add_argument("--seed", type=int, help="noise seed (default: the run's seed)")
    parser.add_argument("--inception", action="store_true", help="add FID/KID/IS for digits/MNIST/Fashion-MNIST")
    parser.add_argument("--resize", choices=["legacy", "clean"], default="legacy",
                        help="Inception input resize: legacy (torch-fidelity's bilinear, the usual FID) or clean "
                        "(antialiased bicubic; numbers not comparable with legacy ones)")  # fmt: skip
    parser.add_argument("--inception-weights", help="Inception .pth (default: eval.inception_weights, torch hub)")
    parser.add_argument("--cache-dir", help="classifier/statistics cache (default: eval.cache_dir, $WGAN_GP_CACHE)")
    return parser.parse_args(argv)


def launch_device() -> torch.device:
    """This process's device; under torchrun (WORLD_SIZE > 1) the process first joins the job through Accelerate."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = PartialState(cpu=cpu).device
    else:
        device = torch.device("cpu" if cpu else "cuda")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # respect a launcher's choice
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return device


def run(args: argparse.Namespace, device: torch.device) -> dict:
    ckpt = find_checkpoint(args.run_dir, args.checkpoint)
    generator, cfg = load_generator(ckpt, device)
    cfg.eval.inception_weights = args.inception_weights or cfg.eval.inception_weights
    cfg.eval.cache_dir = args.cache_dir or cfg.eval.cache_dir
    num = args.num or DEFAULT_NUM[family(cfg.data.name)]
    if num < 2:
        raise TrainerError(f"--num {num}: ask for at least 2 samples (a covariance needs two).")
    metrics = evaluate(
        generator, cfg, None, num, device, seed=args.seed, with_inception=args.inception, resize=args.resize
    )
    step = json.loads((ckpt / checkpoint.STATE_FILE).read_text())["step"]
    record = {"checkpoint": str(ckpt), "step": step, "num": num, "world_size": rank_world()[1], **metrics}
    return {**record, "provenance": metrics.provenance}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    rank, record, error = 0, {}, None
    try:
        device = launch_device()
        rank = rank_world()[0]
        record = run(args, device)
    except TrainerError as err:
        error = err
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:  # one answer per job
        print(f"error: {error}" if error else json.dumps(record), file=sys.stderr if error else sys.stdout, flush=True)
    return 2 if error else 0


if __name__ == "__main__":
    from trainer.accel.shutdown import exit_process

    exit_process(main())
