"""Execution options leave the math alone: same seed, same losses and weights as the plain path, within a tolerance."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import ROOT
from torch.utils.data import Dataset

from trainer.accel.cuda_graph import StaticFeed
from trainer.accel.plan import channels_last
from trainer.accel.runtime import raw_module
from trainer.accel.speed import float32_modes, set_tf32, tf32_modes
from trainer.bench.race import TrainerStep, bench_images
from trainer.bench.reference import ReferenceLoop
from trainer.core import losses
from trainer.core.build import sample_shape
from trainer.core.clock import Clock
from trainer.core.gate import configure
from trainer.core.losses import CriticBatch, Penalty
from trainer.core.step import iteration
from trainer.data.batches import StreamBatches
from trainer.data.registry import load_digits_uint8
from trainer.errors import TrainerError

# Digits 8x8, a narrow conv pair, 2 critic steps per generator step, one CPU thread (deterministic kernels, also on
# a GPU machine: tests/test_cuda.py compares the CUDA paths), no EMA, NCHW and one critic pass over real and fake
# (the GPU defaults; NHWC and two passes, the CPU defaults, are compared with it as options).
TINY = (
    "model.width=8", "model.z_dim=16", "train.batch_size=16", "train.n_critic=2", "train.ema_decay=0",
    "train.cpu_threads=1", "seed=3", "train.cpu=true", "speed.channels_last=false", "speed.joint_forward=true",
)  # fmt: skip
STEPS = 3
# Same inputs, same formulas: only the order of float32 additions differs (one batch of 2n rows instead of two of n,
# NHWC kernels, the fused Adam kernel), ~1e-7 relative per op. Measured over these 3 steps: losses within 4e-7
# relative, weights within 7e-9 (relative norm of the difference). The tolerances leave a 25x and 150x margin for
# other CPUs' kernels and still fail a genuine change: lambda 10 -> 10.001 moves the losses by 1e-4 (the control
# below uses 10.1: 1e-2 and 4e-5).
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _weights(*nets: torch.nn.Module) -> torch.Tensor:
    return torch.cat([q.detach().float().flatten() for net in nets for q in raw_module(net).parameters()])


def _images(cfg) -> torch.Tensor:
    """The images the tolerances were measured on: all 1,797 digits (the training split since has 1,497, on which
    NHWC's reordered sums happen to land 3.7e-6 apart after 3 steps, within 10x of the lambda control below)."""
    return load_digits_uint8() if cfg.data.name == "digits" else bench_images(cfg, 0)


def run_trainer(*overrides: str, stream: bool = False) -> tuple[list[tuple[float, float]], torch.Tensor]:
    """(loss_d, loss_g) per generator step and all weights afterwards, for the trainer with these overrides."""
    cfg = configure(None, (*TINY, *overrides))
    trainer = TrainerStep(cfg, _images(cfg))
    p = trainer.training
    if stream:  # the DataLoader path over the same images and the same sharded order
        p.batches = StreamBatches(_Uint8(_images(cfg)), cfg.train.batch_size, 0, 1, cfg.seed, trainer.device)
        p.inputs.batches = p.batches
    losses = []
    for _ in range(STEPS):
        trainer.step()
        record = p.stats.reduce(trainer.accelerator)
        losses.append((record["loss_d"], record["loss_g"]))
    return losses, _weights(p.parts.generator, p.parts.critic)


def run_reference(*overrides: str) -> tuple[list[tuple[float, float]], torch.Tensor]:
    """The plain loop (three critic forwards, plain backward) fed the trainer's batches and noise stream."""
    cfg = configure(None, (*TINY, *overrides))
    order = TrainerStep(cfg, _images(cfg)).training.batches  # a fresh copy of the trainer's batch order
    reference = ReferenceLoop(cfg, torch.device("cpu"), iter(order.next, None))
    torch.manual_seed(cfg.seed)  # the trainer reseeds after building its networks (seed + rank 0)
    losses = []
    for _ in range(STEPS):
        loss_d, loss_g = reference.step()
        losses.append((loss_d.mean().item(), loss_g.item()))
    return losses, _weights(reference.generator, reference.critic)


class _Uint8(Dataset):
    """uint8 images as a map-style dataset in StreamBatches' format: (image, label, index, replaced)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        return self.images[index], 0, index, 0


def assert_same(a, b, loss_tol: float = LOSS_TOL, weight_tol: float = WEIGHT_TOL) -> None:
    (losses_a, weights_a), (losses_b, weights_b) = a, b
    assert torch.tensor(losses_a) == pytest.approx(torch.tensor(losses_b), rel=loss_tol, abs=loss_tol)
    drift = ((weights_a - weights_b).norm() / weights_b.norm()).item()
    assert drift <= weight_tol, f"weights differ by {drift:.2e} (relative norm)"


@pytest.fixture(scope="module")
def plain():
    AcceleratorState._reset_state(reset_partial_state=True)
    return run_trainer()


def test_trainer_equals_the_plain_three_forward_loop(plain):
    """Concatenated real+fake forward, on-device batches and the parameters-only backward vs the plain loop."""
    assert_same(plain, run_reference())


def test_plain_backward_equals_parameters_only_backward(plain):
    assert_same(plain, run_trainer("speed.backward_params_only=false"), loss_tol=1e-7, weight_tol=1e-7)


def test_on_device_batches_equal_the_dataloader_stream(plain):
    assert_same(plain, run_trainer(stream=True), loss_tol=0, weight_tol=0)  # the very same batches and kernels


@pytest.mark.parametrize("option", ["speed.channels_last=true", "speed.fused_adam=true", "speed.joint_forward=false"])
def test_execution_option_keeps_the_math(plain, option):
    assert_same(plain, run_trainer(option))


def test_static_feed_draws_what_the_eager_step_draws(plain, monkeypatch):
    """speed.cuda_graph's inputs: batches and noise drawn ahead into fixed buffers (StaticFeed), in the eager order,
    give the very same run (the graph capture itself needs CUDA: tests/test_cuda.py)."""

    def fed_step(self, timed=False, eager=False):
        t = self.training
        t.apply_schedule()
        self.feed = getattr(self, "feed", None) or StaticFeed(t.inputs, sample_shape(t.cfg))
        self.feed.fill()
        for record in iteration(t.parts, self.feed):
            t.stats.add(record)
        t.parts.clock.step += 1

    monkeypatch.setattr(TrainerStep, "step", fed_step)
    assert_same(plain, run_trainer(), loss_tol=0, weight_tol=0)


def test_compiled_main_pass_with_eager_penalty_keeps_the_math(plain):
    """speed.compile_scope=modules: dynamo + aot_autograd for G and the critic's main pass, the penalty eager
    (autograd.grad); the aot_eager backend skips inductor's code generation. The default scope, each whole loss
    compiled with the penalty inside, is compared with the eager step in tests/test_compiled_loss.py."""
    torch._dynamo.reset()
    overrides = ("speed.compile=true", "speed.compile_backend=aot_eager", "speed.compile_scope=modules")
    assert_same(plain, run_trainer(*overrides))


def test_the_tolerances_catch_a_real_change(plain):
    """Control: lambda 10 -> 10.1 must fail each comparison on its own, else a tolerance is too loose to mean much."""
    changed = run_trainer("loss.gp_weight=10.1")
    with pytest.raises(AssertionError):
        assert_same(plain, changed, weight_tol=1.0)  # the losses alone
    with pytest.raises(AssertionError):
        assert_same(plain, changed, loss_tol=1.0)  # the weights alone


def test_lazy_penalty_schedule_and_weight():
    cfg = configure(None, (*TINY, "train.n_critic=5", "loss.lazy_penalty=3"))
    t = TrainerStep(cfg, _images(cfg)).training
    batch = CriticBatch(*(torch.zeros(16, 1, 8, 8),) * 2, torch.rand(16), None, torch.zeros(16), torch.zeros(16))
    clock = Clock()
    penalty = Penalty(lambda x: x.flatten(1).sum(1), 10.0, clock, every=3)  # ||grad|| = 8: the penalty is 49

    def critic_steps(penalty: Penalty, clock: Clock, n: int) -> list[bool]:
        """Whether each of n critic steps paid; the clock advances as trainer.core.step.critic_step advances it."""
        paid = []
        for _ in range(n):
            paid.append(penalty(batch)[0] is not None)
            clock.critic += 1
        return paid

    due = critic_steps(penalty, clock, 15)
    assert due == [i % 3 == 0 for i in range(15)]
    t.resume_at(2)  # a new process resumes at step 2 (critic step 10)
    resumed = critic_steps(t.penalty, t.parts.clock, 5)
    assert resumed == due[10:]
    clock.critic = 0
    assert penalty(batch)[0].item() == pytest.approx(30.0 * 49)  # lambda * k on the steps that pay


def test_lazy_penalty_enters_the_loss_with_weight_k():
    """Step 0 pays lambda * 2 * GP, so its critic loss exceeds the paper's by lambda * GP; step 1 has no penalty."""
    (paper, _), cfg = (
        run_trainer("train.n_critic=1"),
        configure(None, (*TINY, "train.n_critic=1", "loss.lazy_penalty=2")),
    )
    trainer = TrainerStep(cfg, _images(cfg))
    trainer.step()
    first = trainer.training.stats.reduce(trainer.accelerator)
    trainer.step()
    assert "penalty" not in trainer.training.stats.reduce(trainer.accelerator)
    assert first["loss_d"] - paper[0][0] == pytest.approx(10.0 * first["penalty"], rel=1e-4)


def test_penalty_fraction_uses_the_first_rows(monkeypatch):
    seen, original = [], losses.gradient_penalty

    def spy(critic, real, fake, eps, **kw):
        seen.append(len(real))
        return original(critic, real, fake, eps, **kw)

    monkeypatch.setattr(losses, "gradient_penalty", spy)
    run_trainer("loss.penalty_fraction=0.25")
    assert seen == [4] * STEPS * 2  # a quarter of 16, on every critic step


def test_tf32_modes_are_set_and_restored():
    before = tf32_modes()
    with float32_modes(("ieee", "ieee")):
        set_tf32(True)
        assert tf32_modes() == ("tf32", "tf32")
        set_tf32(None)  # the default: PyTorch's own modes, as a fresh process has them
        assert tf32_modes() == ("none", "tf32")
        set_tf32(False)
        assert tf32_modes() == ("ieee", "ieee")
    assert tf32_modes() == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.penalty_fraction=0", "loss.penalty_fraction=0.0 is impossible"),
        ("loss.penalty_fraction=1.5", "must be in (0, 1]"),
        ("loss.lazy_penalty=0", "loss.lazy_penalty=0 is impossible"),
        ("speed.lazy_penalty=2", "config key 'speed.lazy_penalty' (from override 'speed.lazy_penalty=2') has moved"),
        ("speed.penalty_fraction=0.5", "it changes the math, so it is now loss.penalty_fraction"),
        ("speed.compile_backend=tvm", "speed.compile_backend='tvm' is not a valid choice"),
    ],
)
def test_speed_keys_are_validated(override, message):
    with pytest.raises(TrainerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configure(None, (override,))


def test_fused_adam_needs_adam():
    with pytest.raises(TrainerError, match="optimizer is rmsprop"):
        configure(str(ROOT / "configs/mnist-wgan-clip.yaml"), ("speed.fused_adam=true",))


def test_channels_last_default_follows_the_measurements():
    """Unset, NHWC where it measured faster (conv-small on CPU: 1.08-1.17x), NCHW elsewhere (dcgan28: 0.89x)."""
    cfg = configure(None, ("train.cpu=true", "model.width=8"))
    critic = TrainerStep(cfg, _images(cfg)).training.parts.critic
    conv = next(m for m in critic.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert channels_last(cfg, cpu) and not channels_last(cfg, gpu)
    assert not channels_last(configure(str(ROOT / "configs/mnist-dcgan.yaml")), cpu)
    assert not channels_last(configure(None, ("speed.channels_last=false",)), cpu)
