"""DiffAugment (data.augment): each operation against its closed form, differentiability (gradcheck), the wiring into
the step (the critic sees the augmented pair, the penalty mixes it, the generator's fakes are augmented), and the
default drawing nothing."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import TINY, ok, python_train, read_metrics

from trainer.core import augment as A
from trainer.core.build import build
from trainer.core.gate import configure
from trainer.core.step import iteration
from trainer.errors import TrainerError


def images(n: int = 6, c: int = 3, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def test_colour_operations_keep_their_invariants() -> None:
    x = images()
    torch.manual_seed(1)
    shift = A.brightness(x) - x  # one constant in [-0.5, 0.5] per image
    assert torch.allclose(shift, shift[:, :1, :1, :1].expand_as(x)) and shift.abs().max() <= 0.5
    sat = A.saturation(x)  # scaled around each pixel's channel mean, which stays
    assert torch.allclose(sat.mean(1), x.mean(1))
    con = A.contrast(x)  # scaled around each image's mean, which stays; the scale is in [0.5, 1.5]
    assert torch.allclose(con.mean((1, 2, 3)), x.mean((1, 2, 3)))
    scale = (con - x.mean((1, 2, 3), keepdim=True)) / (x - x.mean((1, 2, 3), keepdim=True))
    assert ((scale.amin((1, 2, 3)) - scale.amax((1, 2, 3))).abs() < 1e-9).all()
    assert ((scale.amin((1, 2, 3)) >= 0.5) & (scale.amax((1, 2, 3)) <= 1.5)).all()


def test_translation_is_a_zero_filled_shift_of_at_most_an_eighth() -> None:
    x, s = images(n=40), 1  # 8 px * 1/8
    torch.manual_seed(2)
    out = A.translation(x)
    padded = F.pad(x, [s, s, s, s])
    shifts = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    seen = set()
    for i in range(len(x)):
        match = [
            d for d in shifts if torch.equal(out[i], padded[i, :, s + d[0] : s + d[0] + 8, s + d[1] : s + d[1] + 8])
        ]
        assert match, i
        seen.update(match)
    assert len(seen) == 9  # every allowed shift occurs over 40 images


def test_cutout_zeroes_one_square_of_half_the_side() -> None:
    x = images(n=40, side=16)
    torch.manual_seed(3)
    out = A.cutout(x)
    for i in range(len(x)):
        zero = (out[i] == 0).all(0)
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])  # elsewhere untouched
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols)  # one rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8  # 8 = half of 16, clipped to no less than half of it


def test_full_policy_is_differentiable() -> None:
    augment = A.diff_augment("color,translation,cutout")

    def fixed(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(4)  # the same random draw at every evaluation: a fixed (piecewise) affine map of x
        return augment(x)

    x = images(n=2, side=8).requires_grad_(True)
    assert torch.autograd.gradcheck(fixed, (x,), eps=1e-6, atol=1e-6)


def test_default_is_the_identity_and_draws_nothing() -> None:
    assert A.diff_augment("") is A.identity
    x = images()
    state = torch.get_rng_state()
    assert A.identity(x) is x and torch.equal(torch.get_rng_state(), state)


@pytest.fixture
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_step_feeds_the_critic_and_the_penalty_the_augmented_pair(fresh_accelerator_state) -> None:
    cfg = configure(None, (*TINY, "data.augment=translation", "train.ema_decay=0"))
    t = build(cfg, Accelerator(cpu=True))
    assert t.parts.augment is not A.identity
    calls, seen = [], []
    t.parts.augment = lambda x: calls.append(x.shape[0]) or x * 0 + 0.25  # recognisable, differentiable
    loss = t.parts.objective.critic_loss
    t.parts.objective.critic_loss = lambda batch: seen.append(batch) or loss(batch)
    iteration(t.parts, t.inputs)
    n = cfg.train.batch_size
    assert calls == [n, n] * cfg.train.n_critic + [n]  # real and fake per critic step, the fakes of the generator step
    for batch in seen:  # what the scores and the penalty's interpolates are built from
        assert (batch.real == 0.25).all() and (batch.fake == 0.25).all()


def test_training_with_diffaugment_and_bad_policies(run_dir) -> None:
    ok(python_train(f"run.dir={run_dir}", *TINY, "train.steps=2", "data.augment=color,translation,cutout"))
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    bad = [
        (("data.augment=color,zoom",), "'zoom' is not a DiffAugment policy"),
        (("data.name=8gaussians", "model.name=toy", "data.augment=color"), "2-D toy data"),
        (("data.augment=cutout", "speed.cuda_graph=true"), "cannot run with speed.cuda_graph=true yet"),
    ]
    for overrides, words in bad:  # what train.py prints as its one-paragraph error (trainer.cli), exit 2
        with pytest.raises(TrainerError, match=re.escape(words)):
            configure(None, overrides)
