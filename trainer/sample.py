"""`python -m trainer.sample RUN_DIR --num N --out FILE`: samples from a run's latest (or a given) checkpoint.

Also: `--truncation T` (latent entries with |z| > T drawn again), `--seeds A-B` (one sample per seed),
`--interpolate K --seeds A,B,..` (a slerp walk, K frames per leg, to a .png strip, .gif or .mp4) and `--class C`.

Loads the exported generator (the EMA weights when the run kept an EMA) from `generator.safetensors`, which holds
only tensors, so nothing is unpickled. `.npy` gets samples in data space ((N, 2) for toys, (N, C, H, W) in [-1, 1]
for images); `.png` gets a grid (images) or a scatter (toys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file

from trainer.core.gate import configure
from trainer.data.registry import DATASETS
from trainer.data.toys import TOYS
from trainer.errors import TrainerError, unwritable_out
from trainer.latents import draw, latent_walk, mp4_encoder, no_mp4_encoder, parse_seeds, seed_latents, write_frames
from trainer.nets.layers import class_rows
from trainer.nets.models import build_models
from trainer.run import checkpoint
from trainer.run.pictures import save_grid, save_toy_plot


def load_generator(ckpt: Path, device: torch.device) -> tuple[torch.nn.Module, object]:
    """The exported generator of checkpoint `ckpt` in eval mode, and the run's config (num_classes set on the net).
    The checkpoint's files are checked against their recorded hashes first."""
    try:
        record = checkpoint.verify(ckpt)
    except TrainerError as err:
        raise TrainerError(f"{err} Pass an earlier checkpoint with --checkpoint.") from None
    cfg = configure(str(ckpt / "config.yaml"))
    num_classes = int(record.get("num_classes", 0))
    channels = DATASETS[cfg.data.name].channels
    generator, _ = build_models(
        cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, cfg.data.image_size, num_classes=num_classes
    )
    generator.num_classes = num_classes
    try:
        generator.load_state_dict(load_file(str(ckpt / checkpoint.EXPORT_FILE)))
    except Exception as err:  # noqa: BLE001 - a cut or foreign file: OSError, SafetensorError, RuntimeError
        what = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise TrainerError(
            f"{ckpt / checkpoint.EXPORT_FILE} could not be read ({what}); pass an earlier checkpoint with --checkpoint."
        ) from None
    return generator.to(device).eval(), cfg


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    num: int,
    z_dim: int,
    seed: int,
    batch: int,
    device: torch.device,
    truncation: Optional[float] = None,
    label: Optional[int] = None,
) -> torch.Tensor:
    """`num` samples from one noise stream seeded with `seed` (in chunks of `batch`); conditional: one class per grid
    row, or all `label`."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.cat([draw(min(batch, num - start), z_dim, rng, truncation) for start in range(0, num, batch)])
    return generate_from(generator, z, batch, device, label)


@torch.no_grad()
def generate_from(
    generator: torch.nn.Module, z: torch.Tensor, batch: int, device: torch.device, label: Optional[int] = None
) -> torch.Tensor:
    """G(z) for given codes, `batch` rows per forward pass; conditional: one class per grid row, or all `label`."""
    classes, num = getattr(generator, "num_classes", 0), z.shape[0]
    labels = None
    if classes:
        labels = class_rows(num, classes) if label is None else torch.full((num,), label, dtype=torch.long)
    chunks = []
    for start in range(0, num, batch):
        y = None if labels is None else labels[start : start + batch].to(device)
        chunks.append(generator(z[start : start + batch].to(device), y).float().cpu())
    return torch.cat(chunks)


def find_checkpoint(run_dir: Path, given: Optional[Path]) -> Path:
    """--checkpoint, else the run's newest checkpoint; a missing one is an error naming what exists."""
    if given is not None:
        return checkpoint.resolve(run_dir, str(given), option="--checkpoint")  # type: ignore[return-value]
    found = checkpoint.resolve(run_dir, "latest")
    if found is None:
        where = run_dir / "checkpoints"
        why = "it holds none yet; train first" if run_dir.is_dir() else f"{run_dir} does not exist; check the path"
        raise TrainerError(f"no checkpoint in {where}: {why}, or pass a checkpoint folder with --checkpoint.")
    return found


def write(samples: torch.Tensor, args: argparse.Namespace, cfg: object, ckpt: Path) -> None:
    """--out: .npy arrays, or a picture (grid for images, scatter for toys)."""
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".npy":
            np.save(args.out, samples.numpy())
        elif args.interpolate:
            write_frames(samples, args.out, args.fps)
        elif cfg.data.name in TOYS:  # type: ignore[attr-defined]
            real = TOYS[cfg.data.name](len(samples), generator=torch.Generator().manual_seed(args.seed + 1))  # type: ignore[attr-defined]
            save_toy_plot(samples, real, args.out, title=f"{cfg.data.name}, {ckpt.name}")  # type: ignore[attr-defined]
        else:
            save_grid(samples, args.out)
    except OSError as err:
        raise unwritable_out(args.out, err) from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of the run's latest")
    parser.add_argument("--num", type=int, default=64, help="number of samples")
    parser.add_argument(
        "--out", type=Path, required=True, help="output: .npy (arrays), .png (grid/scatter; a strip with --interpolate)"
        ", .gif/.mp4 (--interpolate)"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--batch", type=int, default=500, help="samples per forward pass")
    parser.add_argument("--truncation", type=float, help="draw each latent entry again while |z| > T (e.g. 1.0)")
    parser.add_argument("--seeds", help="one sample per seed instead of --num/--seed: A-B, A,B,C or a mix")
    parser.add_argument("--interpolate", type=int, metavar="K", help="slerp walk through --seeds, K frames per leg")
    parser.add_argument("--fps", type=int, default=12, help="frames per second of a .gif/.mp4 walk")
    parser.add_argument("--class", dest="label", type=int, metavar="C", help="conditional runs: every sample class C")
    args = parser.parse_args(argv)
    try:
        check_args(args)
        ckpt = find_checkpoint(args.run_dir, args.checkpoint)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        generator, cfg = load_generator(ckpt, device)
        check_class(args, generator.num_classes, cfg)
        z_dim = cfg.model.z_dim
        if args.seeds is None:
            samples = generate(generator, args.num, z_dim, args.seed, args.batch, device, args.truncation, args.label)
        else:
            codes = seed_latents(parse_seeds(args.seeds), z_dim, args.truncation)
            codes = latent_walk(codes, args.interpolate) if args.interpolate else codes
            samples = generate_from(generator, codes, args.batch, device, args.label)
        write(samples, args, cfg, ckpt)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(samples)} samples from {ckpt} to {args.out}")
    return 0


def check_args(args: argparse.Namespace) -> None:
    """The flags' values and combinations, before any file is read."""
    pictures = (".png", ".gif", ".mp4") if args.interpolate else (".png",)
    if args.out.suffix not in (".npy", *pictures):
        allowed = ".npy (arrays), .png (a strip), .gif or .mp4 (an animation)" if args.interpolate else (
            ".npy (arrays) or .png (picture); .gif/.mp4 only with --interpolate")  # fmt: skip
        raise TrainerError(f"--out {args.out}: the file must end in {allowed}.")
    if args.num < 1:
        raise TrainerError(f"--num {args.num}: ask for at least 1 sample.")
    if args.batch < 1:
        raise TrainerError(f"--batch {args.batch}: it must be at least 1 (samples per forward pass).")
    if args.truncation is not None and not args.truncation > 0:
        raise TrainerError(f"--truncation {args.truncation}: it must be greater than 0 (e.g. 1.0; omit it for none).")
    if args.interpolate is not None:
        if args.interpolate < 1:
            raise TrainerError(f"--interpolate {args.interpolate}: at least 1 frame per leg between two seeds.")
        if args.seeds is None or len(parse_seeds(args.seeds)) < 2:
            raise TrainerError("--interpolate walks between seeds: give at least two, e.g. --seeds 0-3.")
    if args.fps < 1:
        raise TrainerError(f"--fps {args.fps}: it must be at least 1.")
    if args.out.suffix == ".mp4" and mp4_encoder() is None:
        raise no_mp4_encoder(args.out)


def check_class(args: argparse.Namespace, num_classes: int, cfg: object) -> None:
    if args.label is not None and not num_classes:
        raise TrainerError(f"--class {args.label}: this run is unconditional (model.conditional=false); drop --class.")
    if args.label is not None and not 0 <= args.label < num_classes:
        raise TrainerError(f"--class {args.label}: this run's classes are 0 to {num_classes - 1}.")
    if args.interpolate and num_classes and args.label is None:
        raise TrainerError("--interpolate on a class-conditional run walks within one class: add --class C.")
    if args.interpolate and cfg.data.name in TOYS and args.out.suffix != ".npy":  # type: ignore[attr-defined]
        raise TrainerError("--interpolate on a 2-D toy run makes points, not frames: write --out walk.npy.")


if __name__ == "__main__":
    sys.exit(main())
