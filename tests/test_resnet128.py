"""resnet128: parameter counts in closed form, resnet64's pattern plus one 8d level, and a real train.py step at
128x128 on an image folder."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from conftest import ok, python_train, read_metrics
from PIL import Image

from trainer.nets.layers import LayerNorm2d
from trainer.nets.models import build_models, parameter_count
from trainer.nets.resnet import ResBlock


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def test_parameter_counts_in_closed_form() -> None:
    d, z = 64, 128
    gen, critic = build_models("resnet128", z, 0, 3, 128)
    g_widths, d_widths = [8 * d, 8 * d, 8 * d, 4 * d, 2 * d, d], [d, 2 * d, 4 * d, 8 * d, 8 * d, 8 * d]
    up = sum(
        2 * a + 2 * b + conv(a, b, 3, bias=False) + conv(b, b, 3) + conv(a, b, 1)
        for a, b in itertools.pairwise(g_widths)
    )
    expected_g = (z * 16 * 8 * d + 16 * 8 * d) + up + 2 * d + conv(d, 3, 3)  # linear, blocks, BN, conv to RGB
    down = sum(
        4 * a + conv(a, a, 3, bias=False) + conv(a, b, 3) + conv(a, b, 1) for a, b in itertools.pairwise(d_widths)
    )
    expected_d = conv(3, d, 3) + down + (16 * 8 * d + 1)
    assert parameter_count(gen) == expected_g == 13_524_291
    assert parameter_count(critic) == expected_d == 12_475_649
    g64, d64 = build_models("resnet64", z, 0, 3, 64)
    extra = 4 * 8 * d + 2 * conv(8 * d, 8 * d, 3) - 8 * d + conv(8 * d, 8 * d, 1)  # one more 8d -> 8d level
    assert parameter_count(gen) - parameter_count(g64) == extra == parameter_count(critic) - parameter_count(d64)
    assert sum(isinstance(m, ResBlock) for m in gen.modules()) == 5
    assert sum(isinstance(m, LayerNorm2d) for m in critic.modules()) == 10
    with torch.no_grad():
        fake = gen(torch.randn(2, z))
        assert fake.shape == (2, 3, 128, 128) and fake.abs().max() <= 1 and critic(fake).shape == (2,)


def test_trains_on_an_image_folder_at_128(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["--config", "configs/imagefolder128.yaml", f"data.root={folder}", f"run.dir={tmp_path / 'run'}"]
    args += ["model.width=4", "model.z_dim=16", "train.batch_size=4", "train.n_critic=1", "train.steps=1"]
    args += ["data.num_workers=0", "log.every=1", "log.sample_every=0", "checkpoint.every=0"]
    ok(python_train(*args))
    (record,) = read_metrics(tmp_path / "run")
    assert record["step"] == 1 and np.isfinite(record["loss_d"])
