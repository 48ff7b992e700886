"""Latent codes for sampling: truncated draws, one code per seed, slerp walks, and frames written as strip/GIF/MP4."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from trainer.errors import TrainerError


def draw(num: int, z_dim: int, rng: torch.Generator, truncation: Optional[float] = None) -> Tensor:
    """z ~ N(0, I), (num, z_dim); with `truncation` T every entry with |z| > T is drawn again until none is left
    (rejection: exactly the normal truncated to [-T, T]; entries already inside keep their values)."""
    z = torch.randn(num, z_dim, generator=rng)
    if truncation is None:
        return z
    outside = z.abs() > truncation
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=rng)
        outside = z.abs() > truncation
    return z


def parse_seeds(text: str) -> list[int]:
    """'A-B' (inclusive), 'A,B,C' or a mix ('0-3,9') -> the seeds in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
            if last < first or first < 0:
                raise ValueError
            seeds += range(first, last + 1)
    except ValueError:
        raise TrainerError(
            f"--seeds {text}: give non-negative seeds as A-B (inclusive, A <= B), A,B,C or a mix, e.g. --seeds 0-7."
        ) from None
    return seeds


def seed_latents(seeds: list[int], z_dim: int, truncation: Optional[float] = None) -> Tensor:
    """One code per seed: row i is the first draw of a generator seeded with seeds[i] (the same z for a seed in
    every command)."""
    return torch.cat([draw(1, z_dim, torch.Generator().manual_seed(s), truncation) for s in seeds])


def slerp(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    """Spherical interpolation between rows of z0 and z1 (White 2016): the angle to z0 grows linearly with t and the
    norm moves between the endpoints' norms; a Gaussian code stays where Gaussian codes live (lerp would shrink it)."""
    a, b = z0.double(), z1.double()
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-8  # (anti)parallel codes: the great circle is undefined, use the straight line
    wa = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / torch.where(parallel, 1, sin))
    wb = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1, sin))
    return (wa * a + wb * b).to(z0.dtype)


def latent_walk(codes: Tensor, steps: int) -> Tensor:
    """Frames through codes[0], codes[1], ...: `steps` frames per leg (its start included), then the last code:
    (len(codes) - 1) * steps + 1 codes."""
    legs = [
        slerp(codes[i : i + 1], codes[i + 1 : i + 2], k / steps) for i in range(len(codes) - 1) for k in range(steps)
    ]
    return torch.cat([*legs, codes[-1:]])


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as the grids are written."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_frames(images: Tensor, out: Path, fps: int = 12) -> None:
    """Frames of a walk: .png one strip (left to right), .gif an animation (Pillow), .mp4 through ffmpeg."""
    frames = to_uint8(images)
    if frames.shape[-1] == 1:
        frames = frames[..., 0]
    from PIL import Image

    scale = max(1, 64 // frames.shape[1])  # tiny images (8x8 digits) blown up, as in the sample grids
    pictures = [Image.fromarray(f) for f in frames]
    pictures = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pictures]
    if out.suffix == ".png":
        strip = Image.new(pictures[0].mode, (sum(p.width for p in pictures), pictures[0].height))
        for i, picture in enumerate(pictures):
            strip.paste(picture, (i * picture.width, 0))
        strip.save(out)
    elif out.suffix == ".gif":
        pictures[0].save(out, save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0)
    else:
        _write_mp4(np.stack([np.asarray(p.convert("RGB")) for p in pictures]), out, fps)


def mp4_encoder() -> Optional[str]:
    """An ffmpeg executable: on PATH, or the one the imageio-ffmpeg package ships; None when neither exists."""
    found = shutil.which("ffmpeg")
    if found is None:
        try:
            import imageio_ffmpeg

            found = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            return None
    return found


def no_mp4_encoder(out: Path) -> TrainerError:
    """The refusal of an .mp4 --out on a machine without an encoder (checked before sampling, and again here)."""
    return TrainerError(
        f"--out {out}: writing MP4 needs an encoder (ffmpeg on PATH, or pip install imageio-ffmpeg). Write a .gif "
        f"(Pillow) or a .png strip instead."
    )


def _write_mp4(frames: np.ndarray, out: Path, fps: int) -> None:
    ffmpeg = mp4_encoder()
    if ffmpeg is None:
        raise no_mp4_encoder(out)
    _, h, w, _ = frames.shape
    pad = "pad=ceil(iw/2)*2:ceil(ih/2)*2"  # H.264 wants even sides
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
    cmd += ["-r", str(fps), "-i", "-", "-vf", pad, "-pix_fmt", "yuv420p", "-vcodec", "libx264", str(out)]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise TrainerError(f"--out {out}: ffmpeg failed ({proc.stderr.decode(errors='replace')[-300:]}).")
