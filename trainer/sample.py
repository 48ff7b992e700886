"""`python -m trainer.sample RUN_DIR --num N --out FILE`: samples from a run's latest (or a given) checkpoint.

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

from trainer.config import load_config
from trainer.data.registry import DATASETS
from trainer.data.toys import TOYS
from trainer.errors import TrainerError
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
    cfg = load_config(str(ckpt / "config.yaml"))
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
    generator: torch.nn.Module, num: int, z_dim: int, seed: int, batch: int, device: torch.device
) -> torch.Tensor:
    rng, classes = torch.Generator().manual_seed(seed), getattr(generator, "num_classes", 0)
    labels = class_rows(num, classes) if classes else None  # conditional: one class per grid row
    chunks = []
    for start in range(0, num, batch):
        z = torch.randn(min(batch, num - start), z_dim, generator=rng).to(device)
        y = None if labels is None else labels[start : start + batch].to(device)
        chunks.append(generator(z, y).float().cpu())
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
        elif cfg.data.name in TOYS:  # type: ignore[attr-defined]
            real = TOYS[cfg.data.name](args.num, generator=torch.Generator().manual_seed(args.seed + 1))  # type: ignore[attr-defined]
            save_toy_plot(samples, real, args.out, title=f"{cfg.data.name}, {ckpt.name}")  # type: ignore[attr-defined]
        else:
            save_grid(samples, args.out)
    except OSError as err:
        raise TrainerError(
            f"--out {args.out} cannot be written ({err.strerror or err}). Choose a writable path."
        ) from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of the run's latest")
    parser.add_argument("--num", type=int, default=64, help="number of samples")
    parser.add_argument("--out", type=Path, required=True, help="output file: .npy (arrays) or .png (grid/scatter)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--batch", type=int, default=500, help="samples per forward pass")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix not in (".npy", ".png"):
            raise TrainerError(f"--out {args.out}: the file must end in .npy (arrays) or .png (picture).")
        if args.num < 1:
            raise TrainerError(f"--num {args.num}: ask for at least 1 sample.")
        if args.batch < 1:
            raise TrainerError(f"--batch {args.batch}: it must be at least 1 (samples per forward pass).")
        ckpt = find_checkpoint(args.run_dir, args.checkpoint)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        generator, cfg = load_generator(ckpt, device)
        samples = generate(generator, args.num, cfg.model.z_dim, args.seed, args.batch, device)
        write(samples, args, cfg, ckpt)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} samples from {ckpt} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
