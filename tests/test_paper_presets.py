"""The paper presets against gan_cifar_resnet.py / gan_64x64.py, the conditional pair, AC-GAN losses, LR schedules."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from trainer.core.losses import acgan_critic_loss, acgan_generator_loss, class_accuracy, gradient_penalty
from trainer.core.schedule import lr_factor
from trainer.nets.layers import ClassBatchNorm2d, LayerNorm2d, class_rows
from trainer.nets.models import PRESETS, build_models, parameter_count
from trainer.nets.resnet import ResBlock

SIZE = {"resnet32": 32, "resnet64": 64, "dcgan64": 64}
SMALL = {"resnet32": 8, "resnet64": 4, "dcgan64": 4}
BATCH_STATS = (_BatchNorm, nn.GroupNorm, _InstanceNorm, ClassBatchNorm2d, nn.Dropout)


@pytest.mark.parametrize("name, classes", [("resnet32", 0), ("resnet32", 10), ("resnet64", 10), ("dcgan64", 10)])
def test_full_presets_shapes_and_no_batch_stats(name, classes):  # unconditional 64x64 pairs: test_models, small
    torch.manual_seed(0)
    gen, critic = build_models(name, 128, 0, 3, SIZE[name], num_classes=classes)
    z, y = torch.randn(2, 128), torch.tensor([3, 7])
    with torch.no_grad():
        fake = gen(z, y) if classes else gen(z)
        assert fake.shape == (2, 3, SIZE[name], SIZE[name]) and fake.abs().max() <= 1
        assert critic(fake).shape == (2,)
        if classes:
            score, logits = critic(fake, with_classes=True)
            assert torch.equal(score, critic(fake)) and logits.shape == (2, classes)
    assert not [m for m in critic.modules() if isinstance(m, BATCH_STATS)]


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def test_resnet32_is_the_papers_cifar_resnet():
    w = 128
    gen, critic = build_models("resnet32", 128, 0, 3, 32)
    up_block = 2 * (2 * w) + 2 * conv(w, w, 3) + conv(w, w, 1)  # BN, conv3x3, BN, conv3x3, 1x1 shortcut
    assert parameter_count(gen) == (128 * 16 * w + 16 * w) + 3 * up_block + 2 * w + conv(w, 3, 3)
    first = conv(3, w, 3) + conv(w, w, 3) + conv(3, w, 1)
    down, plain = 2 * conv(w, w, 3) + conv(w, w, 1), 2 * conv(w, w, 3)
    assert parameter_count(critic) == first + down + 2 * plain + (w + 1)  # no normalisation parameters at all
    assert sum(isinstance(m, ResBlock) for m in gen.modules()) == 3
    assert not [m for m in critic.modules() if isinstance(m, (LayerNorm2d, *BATCH_STATS))]
    features = critic.features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, w) and (features >= 0).all()  # ReLU, then the mean over space


@pytest.mark.parametrize("name, norms", [("resnet64", 8), ("dcgan64", 3)])
def test_64x64_critics_use_layer_norm(name, norms):
    _, critic = build_models(name, 16, SMALL[name], 3, 64)
    assert sum(isinstance(m, LayerNorm2d) for m in critic.modules()) == norms


def test_layer_norm_is_over_channels_and_space():
    norm, reference = LayerNorm2d(6), nn.GroupNorm(1, 6)  # one group = statistics over (C, H, W) per sample
    for p, q in ((norm.weight, reference.weight), (norm.bias, reference.bias)):
        p.data.normal_(generator=torch.Generator().manual_seed(1))
        q.data.copy_(p.data)
    x = torch.randn(3, 6, 5, 5) * 4 + 2
    assert torch.allclose(norm(x), reference(x), atol=1e-5)


def test_class_batch_norm_scales_per_class():
    norm = ClassBatchNorm2d(4, 3)
    norm.weight.weight.data = torch.arange(12.0).reshape(3, 4)
    norm.bias.weight.data = -torch.arange(12.0).reshape(3, 4)
    x, y = torch.randn(5, 4, 3, 3), torch.tensor([0, 2, 1, 2, 0])
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    normalised = (x - mean) / torch.sqrt(var + 1e-5)
    gamma, beta = norm.weight.weight[y][:, :, None, None], norm.bias.weight[y][:, :, None, None]
    assert torch.allclose(norm(x, y), normalised * gamma + beta, atol=1e-5)


def test_tflib_initialisation():
    torch.manual_seed(0)
    _, critic = build_models("resnet32", 128, 0, 3, 32)
    block = critic.features[1]  # the 'down' block: conv3x3 (he init), 1x1 shortcut (glorot)
    for weight, std in (
        (block.conv1.weight, math.sqrt(4 / (2 * 128 * 9))),
        (block.shortcut.weight, math.sqrt(2 / 256)),
    ):
        assert weight.abs().max() <= std * math.sqrt(3) and abs(weight.std().item() / std - 1) < 0.03
    _, dcgan = build_models("dcgan64", 128, 16, 3, 64)
    assert abs(dcgan.features[0].weight.std().item() / 0.02 - 1) < 0.05


@pytest.mark.parametrize("name", SIZE)
def test_conditional_generator_uses_its_labels(name):
    torch.manual_seed(0)
    gen, _ = build_models(name, 16, SMALL[name], 3, SIZE[name], num_classes=4)
    for m in gen.modules():  # non-trivial class scales, as after some training
        if isinstance(m, ClassBatchNorm2d):
            m.weight.weight.data.uniform_(0.5, 1.5)
    gen.eval()  # running statistics: each sample depends on its own label only
    z, y = torch.randn(3, 16), torch.tensor([0, 1, 2])
    with torch.no_grad():
        out, other = gen(z, y), gen(z, torch.tensor([3, 1, 2]))
    assert not torch.allclose(out[0], other[0]) and torch.equal(out[1:], other[1:])
    with pytest.raises(ValueError, match="class-conditional"):
        gen(z)


@pytest.mark.parametrize("name", SIZE)
def test_conditional_critic_gradients(name):
    torch.manual_seed(0)
    _, critic = build_models(name, 16, SMALL[name], 3, SIZE[name], num_classes=4)
    real, fake, labels = (
        torch.randn(2, 3, SIZE[name], SIZE[name]),
        torch.randn(2, 3, SIZE[name], SIZE[name]),
        torch.arange(2),
    )
    penalty, _ = gradient_penalty(critic, real, fake)  # the penalty sees the score only
    penalty.backward()
    weights = {k: p for k, p in critic.named_parameters() if k.endswith("weight")}  # convs, linears, layer norms
    reached = {k for k, p in weights.items() if p.grad is not None and p.grad.abs().max() > 0}
    assert reached == {k for k in weights if not k.startswith("classifier.")}
    critic.zero_grad(set_to_none=True)
    _, logits = critic(real, with_classes=True)
    acgan_critic_loss(logits, labels).backward()
    assert critic.classifier.weight.grad.abs().max() > 0 and critic.head.weight.grad is None


def test_acgan_losses_match_cross_entropy_by_hand():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]), torch.tensor([0, 1])
    by_hand = -(logits.log_softmax(1)[torch.arange(2), labels]).mean()
    assert torch.allclose(acgan_generator_loss(logits, labels), by_hand)
    assert torch.allclose(acgan_critic_loss(logits, labels), by_hand)
    assert class_accuracy(logits, labels).item() == 0.5 and F.cross_entropy(logits, labels) == by_hand


def test_class_rows_one_class_per_row():
    labels = class_rows(100, 10).reshape(10, 10)
    assert torch.equal(labels, torch.arange(10)[:, None].expand(10, 10))
    assert class_rows(16, 3).tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_linear_schedule_decays_to_zero_and_resumes():
    """The rate is a pure function of the generator step (trainer.core.build.Training.apply_schedule), so a resumed
    run, which restores only the step, continues the schedule exactly."""
    lrs = [2e-4 * lr_factor("linear", step, 10) for step in range(1, 13)]
    assert lrs[:3] == pytest.approx([2e-4 * (1 - k / 10) for k in (1, 2, 3)]) and lrs[9:] == [0.0] * 3
    resumed = [2e-4 * lr_factor("linear", step, 10) for step in range(4, 6)]  # a new process at step 4
    assert resumed == pytest.approx(lrs[3:5])
    assert [lr_factor("constant", k, 10) for k in (0, 5, 20)] == [1.0] * 3


def test_registry_marks_conditional_presets():
    assert {n for n, p in PRESETS.items() if p.conditional} == set(SIZE)
    with pytest.raises(ValueError, match="no class-conditional form"):
        build_models("conv-small", 16, 8, 1, 8, num_classes=10)
