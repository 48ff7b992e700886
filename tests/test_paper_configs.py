"""The paper configs carry the paper's numbers; their new keys fail with a message naming the key and the choices."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from PIL import Image

from trainer.core.build import batches_from_config
from trainer.core.gate import configure
from trainer.errors import TrainerError


def paper(name: str, *overrides: str):
    return configure(str(ROOT / "configs" / f"{name}.yaml"), overrides)


def test_cifar10_resnet_is_the_papers_recipe():
    cfg = paper("cifar10-resnet")
    assert (cfg.model.name, cfg.model.z_dim, cfg.data.name, cfg.data.image_size) == ("resnet32", 128, "cifar10", 32)
    assert (cfg.optim.name, cfg.optim.lr_d, cfg.optim.lr_g, cfg.optim.betas) == ("adam", 2e-4, 2e-4, [0.0, 0.9])
    assert (cfg.optim.schedule, cfg.train.steps, cfg.train.n_critic, cfg.loss.gp_weight) == ("linear", 100000, 5, 10)
    assert (cfg.train.batch_size, cfg.train.batch_size_g, cfg.model.conditional) == (64, 128, False)
    acgan = paper("cifar10-resnet-acgan")
    assert acgan.model.conditional and (acgan.loss.acgan_scale, acgan.loss.acgan_scale_g) == (1.0, 0.1)
    assert acgan.log.num_samples == 100  # a 10 x 10 grid, one class per row


@pytest.mark.parametrize("name, model, data", [
    ("celeba64", "resnet64", "celeba"), ("lsun-bedroom64", "resnet64", "lsun-bedroom"),
    ("imagefolder", "resnet64", "imagefolder"),
])  # fmt: skip
def test_64x64_configs(name, model, data):
    cfg = paper(name)
    assert (cfg.model.name, cfg.data.name, cfg.data.image_size) == (model, data, 64)
    assert (cfg.optim.lr_d, cfg.optim.betas, cfg.optim.schedule) == (1e-4, [0.0, 0.9], "constant")


@pytest.mark.parametrize("override, message", [
    ("data.crop=random", "data.crop='random' is not a valid choice. Valid choices: center, none."),
    ("optim.schedule=cosine", "optim.schedule='cosine' is not a valid choice. Valid choices: constant, linear."),
    ("data.num_workers=-1", "data.num_workers=-1 is impossible: it must be 0 or more."),
    ("train.batch_size_g=-2", "train.batch_size_g=-2 is impossible: it must be 0 or more."),
    ("loss.acgan_scale_g=-0.1", "loss.acgan_scale_g=-0.1 is impossible: it must be 0 or more."),
    ("model.name=conv-small", "model.name=conv-small has no conditional form. Use: dcgan64, resnet32, resnet64."),
    ("data.name=celeba", "needs class labels, but data.name=celeba has none. Labelled: cifar10, digits,"),
])  # fmt: skip
def test_bad_paper_keys(override, message):
    with pytest.raises(TrainerError) as info:
        paper("cifar10-resnet-acgan", override)
    assert message in str(info.value)


def test_batches_from_config_passes_the_data_options(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (20, 10), (200, 0, 0) if cls == "a" else (0, 0, 200)).save(tmp_path / cls / "x.png")
    overrides = (f"data.root={tmp_path}", "data.image_size=64", "train.batch_size=2", "data.crop=none")
    cfg = paper("imagefolder", *overrides, "model.conditional=true", "data.num_workers=0")
    batches = batches_from_config(cfg, torch.device("cpu"), 0, 1)
    x, y = batches.next_labelled()
    assert x.shape == (2, 3, 64, 64) and batches.num_classes == 2 and sorted(y.tolist()) == [0, 1]
    assert torch.equal(x[:, 0].amax((1, 2)) > 0.5, y == 0)  # class a is the red image
