"""Command line of train.py: `--config FILE key=value ...`, `--print-config`; user errors as one paragraph, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from trainer.errors import TrainerError
from trainer.run.signals import EXIT_PREEMPTED, Preempted, install

EXIT_USER_ERROR = 2


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a WGAN-GP. No arguments: the offline default (digits, CPU-friendly, a few minutes).",
        epilog="Example: accelerate launch train.py --config configs/mnist-dcgan.yaml train.steps=20000",
    )
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml); overrides come after it")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=2000")
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides; a config file given without --config (the usual slip) is refused with the fix."""
    for item in args.overrides:
        if "=" not in item and item.endswith((".yaml", ".yml")):
            raise TrainerError(
                f"'{item}' looks like a config file, but config files come after --config: "
                f"train.py --config {item} [key=value ...]."
            )
    return args.overrides


def resolved_defaults(cfg) -> str:
    """What --print-config adds after the YAML: the optimizer values that null stands for (the loss's paper's)."""
    from trainer.core.losses import LOSSES

    spec, o = LOSSES[cfg.loss.name], cfg.optim
    used = {
        "optim.name": o.name or spec.optimizer,
        "optim.lr_d": o.lr_d or spec.lr,
        "optim.lr_g": o.lr_g or spec.lr,
        "optim.betas": list(o.betas or spec.betas),
    }
    lines = [f"#   {key}: {value}" for key, value in used.items()]
    return f"# used for training (null = loss.name={cfg.loss.name}'s paper default):\n" + "\n".join(lines) + "\n"


GLOO_LOST = ("Timed out", "Connection closed by peer", "Connection reset by peer")  # gloo's texts: it raises no type


def lost_a_process(err: RuntimeError) -> bool:
    """A collective failed because another process died or hung: torch's distributed error types (NCCL, the store,
    the network), or gloo's plain RuntimeError, which only its message tells apart (measured: a killed peer gives
    "Connection closed by peer", a stopped one "Timed out")."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or any(text in str(err) for text in GLOO_LOST)


def report_error(err: TrainerError) -> None:
    if os.environ.get("RANK", "0") == "0":  # one message per job, not one per process
        print(f"error: {err}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    install()  # before the slow imports: a stop signal during start-up still ends in a checkpoint
    args = parse_args(argv)
    try:
        from trainer.config import to_yaml
        from trainer.core.gate import configure

        cfg = configure(args.config, tuple(_overrides(args)), launch=not args.print_config)
        if args.print_config:
            print(to_yaml(cfg), end="")  # stdout stays the config itself: `--print-config > x.yaml` round-trips
            print(resolved_defaults(cfg), end="", file=sys.stderr)
            return 0
        from trainer.core.loop import train

        train(cfg)
    except TrainerError as err:
        report_error(err)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        if not lost_a_process(err):
            raise
        print(  # on every rank: the main process may be the one that died
            f"error: another process died or hung longer than train.timeout_s ({str(err).splitlines()[0][:200]}). "
            f"Rerun with run.resume=latest to continue from the last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_USER_ERROR
    except Preempted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(
                f"[wgan-gp] {stop}; continue with run.resume=latest (exit {EXIT_PREEMPTED})",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_PREEMPTED
    return 0
