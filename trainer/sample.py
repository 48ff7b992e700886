"""`python -m trainer.sample RUN_DIR --num N --out FILE`: samples from a run's latest (or a given) checkpoint.

Loads the exported generator (the EMA weights when the run kept an EMA) from `generator.safetensors`, which holds
only tensors, so nothing is unpickled. `.npy` gets samples in data space ((N, 2) for toys, (N, C, H, W) in [-1, 1]
for images); `.png` gets a grid (images) or a scatter (toys).
"""

from __future__ import annotations

import argparse
import json
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
    """The exported generator of checkpoint `ckpt` in eval mode, and the run's config (num_classes set on the net)."""
    cfg = load_config(str(ckpt / "config.yaml"))
    num_classes = int(json.loads((ckpt / checkpoint.STATE_FILE).read_text()).get("num_classes", 0))
    channels = DATASETS[cfg.data.name].channels
    generator, _ = build_models(
        cfg.model.name, cfg.model.z_dim, cfg.model.width, channels, cfg.data.image_size, num_classes=num_classes
    )
    generator.num_classes = num_classes
    try:
        generator.load_state_dict(load_file(str(ckpt / checkpoint.EXPORT_FILE)))
    except (OSError, RuntimeError) as err:
        raise TrainerError(
            f"{ckpt / checkpoint.EXPORT_FILE} could not be read ({err}); try an earlier checkpoint."
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
        ckpt = args.checkpoint or checkpoint.resolve(args.run_dir, "latest")
        if ckpt is None or not (ckpt / checkpoint.STATE_FILE).is_file():
            raise TrainerError(f"no checkpoint in {args.run_dir / 'checkpoints'}; train first, or pass --checkpoint.")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        generator, cfg = load_generator(ckpt, device)
        samples = generate(generator, args.num, cfg.model.z_dim, args.seed, args.batch, device)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".npy":
            np.save(args.out, samples.numpy())
        elif cfg.data.name in TOYS:
            real = TOYS[cfg.data.name](args.num, generator=torch.Generator().manual_seed(args.seed + 1))
            save_toy_plot(samples, real, args.out, title=f"{cfg.data.name}, {ckpt.name}")
        else:
            save_grid(samples, args.out)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} samples from {ckpt} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
