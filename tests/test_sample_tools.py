"""trainer.sample's --truncation, --seeds, --interpolate and --class against closed forms and independent draws."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, ok, python_train, run_cmd
from PIL import Image

from trainer.latents import draw, latent_walk, mp4_encoder, parse_seeds, seed_latents, slerp

COND = ["data.image_size=32", "model.name=resnet32", "model.conditional=true", "train.batch_size=8"]


def test_slerp_endpoints_norm_and_angle() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-12) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-12)
    u, v = a / a.norm(dim=1, keepdim=True) * 3, b / b.norm(dim=1, keepdim=True) * 3  # equal norms: stays on the sphere
    omega = torch.arccos((u * v).sum(1) / 9)
    for t in (0.1, 0.25, 0.5, 0.9):
        w = slerp(u, v, t)
        assert torch.allclose(w.norm(dim=1), torch.full((5,), 3.0, dtype=torch.float64), atol=1e-12)
        angle = torch.arccos(((u * w).sum(1) / 9).clamp(-1, 1))
        assert torch.allclose(angle, t * omega, atol=1e-9)  # the angle to the start grows linearly
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel codes: the straight line


def test_truncation_bound_and_truncated_normal_variance() -> None:
    """Every entry within T; entries inside T at the first draw untouched; the variance is the truncated normal's
    1 - 2 T phi(T) / (2 Phi(T) - 1)."""
    T = 0.8
    z = draw(400, 500, torch.Generator().manual_seed(3), truncation=T)
    plain = torch.randn(400, 500, generator=torch.Generator().manual_seed(3))
    assert z.abs().max() <= T and torch.equal(z[plain.abs() <= T], plain[plain.abs() <= T])
    phi, cdf = math.exp(-T * T / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(T / math.sqrt(2)))
    expected = 1 - 2 * T * phi / (2 * cdf - 1)
    assert abs(z.double().var().item() - expected) < 3e-3 and abs(z.double().mean().item()) < 3e-3
    assert torch.equal(
        draw(7, 3, torch.Generator().manual_seed(1)), torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    )


def test_seeds_parse() -> None:
    assert parse_seeds("3-5") == [3, 4, 5] and parse_seeds("0-1,9") == [0, 1, 9] and parse_seeds("7") == [7]
    assert len(latent_walk(seed_latents([1, 2, 3], 4), 5)) == 11


def sample(run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """trainer.sample's main() in this process (its exit code and output): the command without a new interpreter."""
    from trainer.sample import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(run_dir), *flags])
    return subprocess.CompletedProcess(["trainer.sample", *flags], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sample_tools")
    ok(python_train(f"run.dir={root / 'plain'}", "train.steps=2", *TINY))
    ok(python_train(f"run.dir={root / 'cond'}", "train.steps=1", *TINY, *COND))
    return {"plain": root / "plain", "cond": root / "cond"}


def generator_of(run_dir: Path):
    from trainer.run.checkpoint import list_checkpoints
    from trainer.sample import load_generator

    return load_generator(list_checkpoints(run_dir)[-1], torch.device("cpu"))[0]


def test_seeds_and_walk_match_independent_draws(runs: dict[str, Path], tmp_path: Path) -> None:
    g = generator_of(runs["plain"])
    z = {s: torch.randn(1, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 4, 5)}
    ok(
        run_cmd(
            [
                sys.executable,
                "-m",
                "trainer.sample",
                str(runs["plain"]),
                "--seeds",
                "3-5",
                "--out",
                str(tmp_path / "s.npy"),
            ]
        )
    )
    with torch.no_grad():
        expected = g(torch.cat([z[s] for s in (3, 4, 5)])).numpy()
    assert np.allclose(np.load(tmp_path / "s.npy"), expected, rtol=0, atol=1e-6)  # the same codes (threads may differ)

    ok(sample(runs["plain"], "--seeds", "3,5", "--interpolate", "4", "--out", str(tmp_path / "w.npy")))
    walk = np.load(tmp_path / "w.npy")
    a, b = z[3][0].double(), z[5][0].double()
    omega = math.acos(float(a @ b / (a.norm() * b.norm())))
    mid = (math.sin(omega / 2) * (a + b) / math.sin(omega)).float()[None]  # slerp at t = 1/2, written out
    with torch.no_grad():
        assert walk.shape[0] == 5 and np.allclose(walk[0], g(z[3])[0].numpy(), rtol=0, atol=1e-6)
        assert np.allclose(walk[4], g(z[5])[0].numpy(), rtol=0, atol=1e-6)
        assert np.allclose(walk[2], g(mid)[0].numpy(), rtol=0, atol=1e-5)

    ok(sample(runs["plain"], "--seeds", "0-2", "--interpolate", "3", "--out", str(tmp_path / "w.gif")))
    with Image.open(tmp_path / "w.gif") as gif:
        assert gif.n_frames == 7 and gif.size == (64, 64)  # 8x8 digits blown up 8x
    ok(sample(runs["plain"], "--seeds", "0-2", "--interpolate", "3", "--out", str(tmp_path / "w.png")))
    assert Image.open(tmp_path / "w.png").size == (7 * 64, 64)


def test_truncated_grid_and_clean_refusals(runs: dict[str, Path], tmp_path: Path) -> None:
    g = generator_of(runs["plain"])
    ok(sample(runs["plain"], "--num", "6", "--truncation", "0.5", "--seed", "2", "--out", str(tmp_path / "t.npy")))
    z = draw(6, 16, torch.Generator().manual_seed(2), truncation=0.5)
    with torch.no_grad():
        assert np.allclose(np.load(tmp_path / "t.npy"), g(z).numpy(), rtol=0, atol=1e-6)
    bad = [
        (["--class", "1"], "unconditional"),
        (["--interpolate", "3", "--seeds", "4"], "at least two"),
        (["--truncation", "0"], "greater than 0"),
        (["--seeds", "5-2"], "A <= B"),
        (["--seeds", "0-1", "--interpolate", "2", "--out", str(tmp_path / "w.webm")], ".gif or .mp4"),
    ]
    for flags, words in bad:
        flags = flags if "--out" in flags else [*flags, "--out", str(tmp_path / "x.npy")]
        proc = sample(runs["plain"], *flags)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, (flags, proc.stderr)
    mp4 = sample(runs["plain"], "--seeds", "0-1", "--interpolate", "2", "--out", str(tmp_path / "w.mp4"))
    if mp4_encoder() is None:  # this machine has no encoder: refused with the fix (pip install imageio-ffmpeg, .gif)
        assert mp4.returncode == 2 and "imageio-ffmpeg" in mp4.stderr and not (tmp_path / "w.mp4").exists()
    else:
        assert mp4.returncode == 0 and (tmp_path / "w.mp4").stat().st_size > 0


def test_class_on_a_conditional_run(runs: dict[str, Path], tmp_path: Path) -> None:
    g = generator_of(runs["cond"])
    ok(sample(runs["cond"], "--seeds", "0-3", "--class", "7", "--out", str(tmp_path / "c.npy")))
    z = torch.cat([torch.randn(1, 16, generator=torch.Generator().manual_seed(s)) for s in range(4)])
    with torch.no_grad():
        assert np.allclose(np.load(tmp_path / "c.npy"), g(z, torch.full((4,), 7)).numpy(), rtol=0, atol=1e-6)
    proc = sample(runs["cond"], "--class", "10", "--out", str(tmp_path / "x.npy"))
    assert proc.returncode == 2 and "classes are 0 to 9" in proc.stderr
    proc = sample(runs["cond"], "--seeds", "0-1", "--interpolate", "2", "--out", str(tmp_path / "x.gif"))
    assert proc.returncode == 2 and "add --class C" in proc.stderr
