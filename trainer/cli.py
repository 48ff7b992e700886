"""Command line of train.py: `--config FILE key=value ...`, `--print-config`; user errors as one paragraph, exit 2."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Optional

# Idle OpenMP threads sleep instead of spinning (set before torch's OpenMP runtime starts, i.e. before torch is
# imported): on a busy machine a spinning thread burns the core its sibling needs, and a 40-step default run took
# 76-199 s at load 4.5-5 on 2 cores against 35-39 s with passive waiting; the arithmetic is the same, so the metrics
# are bit-identical (README: Measured; `python -m trainer.bench --contention 2` measures it). An explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trainer.errors import EnvironmentVariableError, TrainerError  # noqa: E402 - after the OpenMP setting above
from trainer.run.signals import EXIT_PREEMPTED, Preempted, install  # noqa: E402

EXIT_USER_ERROR = 2
# What train.py reads when no --config is given: the offline default, real 28x28 digits (docs/configs.md). A file
# given with --config replaces it; the keys a file leaves out take the schema's values (trainer/config.py).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse's own error, plus the form overrides take (`--steps 300` is the usual slip); exit 2."""
        print(f"{self.prog}: error: {message}.{_flag_hint(sys.argv[1:])}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _flag_hint(args: list[str]) -> str:
    """For a `--name` that is no option of train.py: the config keys it may mean, written as an override."""
    options = ("--config", "--print-config", "--help")
    given = [(i, a) for i, a in enumerate(args) if a.startswith("--") and a.split("=")[0] not in options]
    if not given:
        return ""
    i, flag = given[0]
    flags = [flag.lstrip("-").split("=")[0]]
    after = flag.split("=", 1)[1] if "=" in flag else (args[i + 1] if i + 1 < len(args) else "...")
    from omegaconf import OmegaConf

    from trainer.config import Config, _known_keys

    keys = _known_keys(OmegaConf.structured(Config))
    name = flags[0].replace("-", "_")
    close = [k for k in keys if k.rsplit(".", 1)[-1] == name] or difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
    example = f"{close[0]}={after if '=' not in after or '=' in flag else '...'}" if close else "train.steps=300"
    return (
        f" Settings are dotted key=value overrides after the options, not flags: e.g. {example}"
        + (f" (keys like --{flags[0]}: {', '.join(close)})" if close else "")
        + "; python train.py --print-config lists every key."
    )


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = _Parser(
        prog="train.py",
        description="Train a WGAN-GP. Without --config: the offline default, configs/default.yaml (5,000 real MNIST "
        "digits at 28x28, an MLP pair, minutes on a CPU).",
        epilog="Example: accelerate launch train.py --config configs/mnist-dcgan.yaml train.steps=20000",
    )
    parser.add_argument(
        "--config", help="YAML experiment file (configs/*.yaml; default configs/default.yaml); overrides come after it"
    )
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


def default_config() -> str:
    """configs/default.yaml of this checkout, or a message saying it is missing and how to get it back."""
    if not DEFAULT_CONFIG.is_file():
        raise TrainerError(
            f"the offline default config {DEFAULT_CONFIG} is missing (train.py reads it when no --config is given). "
            f"Restore it (git checkout -- configs/default.yaml) or pass an experiment file: --config configs/NAME.yaml."
        )
    return str(DEFAULT_CONFIG)


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


# gloo's texts (it raises no type): a stopped peer gives "Timed out ..." or, on a group started on its own store
# (trainer.accel.runtime.elastic_process_group), "Application timeout caused pair closure"; a killed one
# "Connection closed/reset by peer"
GLOO_LOST = ("Timed out", "Application timeout", "Connection closed by peer", "Connection reset by peer")


def lost_a_process(err: RuntimeError) -> bool:
    """A collective failed because another process died or hung: torch's distributed error types (NCCL, the store,
    the network), or gloo's plain RuntimeError, which only its message tells apart (GLOO_LOST)."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or any(text in str(err) for text in GLOO_LOST)


def report_error(err: TrainerError) -> None:
    """One message per job, not one per process: rank 0 speaks for a multi-process job (every rank reads the same
    config and files); a process that is no part of such a job (a stale RANK in a plain shell) always speaks."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    alone = not world.isdigit() or int(world) <= 1
    if alone or isinstance(err, EnvironmentVariableError) or os.environ.get("RANK", "0") == "0":
        print(f"error: {err}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    install()  # before the slow imports: a stop signal during start-up still ends in a checkpoint
    args = parse_args(argv)
    try:
        from trainer.config import to_yaml
        from trainer.core.gate import configure

        cfg = configure(args.config or default_config(), tuple(_overrides(args)), launch=not args.print_config)
        if args.print_config:
            print(to_yaml(cfg), end="")  # stdout stays the config itself: `--print-config > x.yaml` round-trips
            print(resolved_defaults(cfg), end="", file=sys.stderr)
            return 0
        from trainer.accel.runtime import leave_process_group
        from trainer.core.loop import train

        train(cfg)
        leave_process_group()
    except TrainerError as err:
        report_error(err)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        if not lost_a_process(err):
            raise
        print(  # on every rank: the main process may be the one that died
            f"error: {'Timed out: ' if 'timeout' in str(err).lower() else ''}another process died or hung longer "
            f"than train.timeout_s ({str(err).splitlines()[0][:200]}). "
            f"Rerun with run.resume=latest to continue from the last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_USER_ERROR
    except Preempted as stop:
        from trainer.accel.runtime import leave_process_group

        leave_process_group()  # every process stopped at the same step, after the checkpoint's barriers
        if os.environ.get("RANK", "0") == "0":
            print(
                f"[wgan-gp] {stop}; continue with run.resume=latest (exit {EXIT_PREEMPTED})",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_PREEMPTED
    return 0
