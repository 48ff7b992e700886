"""Does the critic memorise its training images? python scripts/critic_gap.py RUN_DIR [--num N]

Loads the newest checkpoint of a digits or mnist5k run (its hashes checked first), and prints the critic's mean value
on the training images, on the held-out real images (never trained on) and on N generated images (the checkpoint's
sampling generator). E[D(train)] - E[D(fake)] is the Wasserstein estimate the run logs; E[D(train)] - E[D(held-out)]
is the part of it the critic spends telling images it has seen from real ones it has not (Gulrajani et al. 2017
detect overfitting the same way, with the critic's loss on a validation set). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from trainer.core.gate import configure
from trainer.data.files import resize_uint8
from trainer.data.mnist5k import load_mnist5k
from trainer.data.registry import load_digits_split
from trainer.nets.models import build_models
from trainer.run import checkpoint

SPLITS = {"mnist5k": load_mnist5k, "digits": load_digits_split}


@torch.no_grad()
def gap(run_dir: Path, num: int) -> dict:
    ckpt = checkpoint.resolve(run_dir, "latest")
    checkpoint.verify(ckpt)
    cfg = configure(str(ckpt / "config.yaml"))
    if cfg.data.name not in SPLITS or cfg.model.conditional:
        sys.exit(f"{run_dir}: a critic gap needs an unconditional run on {' or '.join(SPLITS)} (a held-out split)")
    gen, critic = build_models(cfg.model.name, cfg.model.z_dim, cfg.model.width, 1, cfg.data.image_size)
    critic.load_state_dict(load_file(str(ckpt / "model_1.safetensors")))
    gen.load_state_dict(load_file(str(ckpt / checkpoint.EXPORT_FILE)))
    critic.eval(), gen.eval()
    scale = lambda images: resize_uint8(images, cfg.data.image_size).float() / 127.5 - 1  # noqa: E731
    train, held_out = (scale(SPLITS[cfg.data.name](split)[0]) for split in ("train", "held-out"))
    z = torch.randn(num, cfg.model.z_dim, generator=torch.Generator().manual_seed(0))
    d_train, d_held, d_fake = (critic(x).mean().item() for x in (train, held_out, gen(z)))
    return {"run": str(run_dir), "step": json.loads((ckpt / "trainer_state.json").read_text())["step"],
            "d_train": d_train, "d_held_out": d_held, "d_fake": d_fake, "wasserstein_train": d_train - d_fake,
            "wasserstein_held_out": d_held - d_fake, "train_minus_held_out": d_train - d_held}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--num", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(gap(args.run_dir, args.num)))
