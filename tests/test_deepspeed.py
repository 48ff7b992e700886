"""DeepSpeed ZeRO-2 for both networks on CPU (gloo, 2 ranks, the real train.py under torchrun): DDP step, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, ok, read_metrics, torchrun_train
from safetensors.torch import load_file

pytest.importorskip("deepspeed", reason="DeepSpeed is the `deepspeed` extra: pip install -e '.[deepspeed]'")

# Adam (the WGAN-GP default), bf16 autocast with the fp32 penalty, EMA on; one critic step per generator step; NCHW on
# both sides (DeepSpeed keeps it; DDP on CPU would otherwise take NHWC for conv-small, and Adam's first update,
# lr * sign(g), turns NHWC's last-bit rounding differences into whole steps).
STEP = [*TINY, "train.n_critic=1", "seed=5", "train.precision=bf16", "speed.channels_last=false"]
# DDP all-reduces gradients, ZeRO-2 reduce-scatters them into flat partitions: the float32 sums may round apart.
# An Adam step moves a weight by up to about lr = 1e-4, so 1e-6 tells a different update from rounding.
ATOL = 1e-6


def _engine_weights(checkpoint: Path, index: int) -> dict[str, torch.Tensor]:
    """A network's weights from Accelerate's save_state of a DeepSpeed engine (0: generator, 1: critic)."""
    folder = checkpoint / ("pytorch_model" if index == 0 else f"pytorch_model_{index}")
    return torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def _ddp_weights(checkpoint: Path, index: int) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")))


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps under ZeRO-2 with a checkpoint after each."""
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    ok(torchrun_train(2, f"run.dir={run_dir}", *STEP, "train.steps=2", "train.deepspeed=2", "checkpoint.every=1",
                      "checkpoint.keep=0"))  # fmt: skip
    return run_dir


def test_zero2_steps_equal_ddp_steps(zero2_run: Path, tmp_path: Path) -> None:
    ddp_dir = tmp_path / "ddp"
    ok(torchrun_train(2, f"run.dir={ddp_dir}", *STEP, "train.steps=2", "checkpoint.every=1"))
    ckpt = "checkpoints/step-{:08d}"
    zero1, zero2 = zero2_run / ckpt.format(1), zero2_run / ckpt.format(2)
    assert (zero1 / "pytorch_model_1").is_dir() and not (ddp_dir / ckpt.format(1) / "pytorch_model_1").exists()
    prints = _state(zero2)["fingerprints"]
    assert _state(zero2)["world_size"] == 2 and len(prints) == 2 and prints[0] == prints[1]  # replicas agree
    worst, moved = 0.0, 0.0
    for step in (1, 2):  # Adam's first update is lr * sign(g); the second one depends on the gradients' sizes
        for index in (0, 1):  # generator, critic; each step is one critic update, then one generator update
            want, got = (
                _ddp_weights(ddp_dir / ckpt.format(step), index),
                _engine_weights(zero2_run / ckpt.format(step), index),
            )
            assert want.keys() == got.keys()
            for key, value in want.items():
                torch.testing.assert_close(got[key], value, rtol=0, atol=ATOL, msg=f"step {step}: {key}")
                worst = max(worst, (got[key] - value).abs().max().item())
                if step == 2 and "running_" not in key and "num_batches" not in key:  # parameters, not BN statistics
                    moved = max(moved, (value - _engine_weights(zero1, index)[key]).abs().max().item())
    assert moved > 50 * ATOL, "the second step moved no weight by more than the tolerance: the test is vacuous"
    print(f"ZeRO-2 vs DDP: max |difference| {worst:.2e} over two steps; the second step moves weights by {moved:.2e}")


def test_zero2_resume_equals_uninterrupted(zero2_run: Path, tmp_path: Path) -> None:
    resumed_dir = tmp_path / "resumed"
    proc = ok(torchrun_train(2, f"run.dir={resumed_dir}", *STEP, "train.steps=2", "train.deepspeed=2",
                             f"run.resume={zero2_run}/checkpoints/step-00000001"))  # fmt: skip
    assert "at step 1;" in proc.stdout
    want, got = zero2_run / "checkpoints" / "step-00000002", resumed_dir / "checkpoints" / "step-00000002"
    assert _state(got)["fingerprints"] == _state(want)["fingerprints"]  # both ranks, both networks, bit for bit
    for name in ("ema.safetensors", "generator.safetensors"):
        for key, value in load_file(str(want / name)).items():
            assert torch.equal(load_file(str(got / name))[key], value), f"{name}: {key}"
    for index in (0, 1):  # the ZeRO-partitioned Adam moments came back too, or step 3 would differ
        for key, value in _engine_weights(want, index).items():
            assert torch.equal(_engine_weights(got, index)[key], value), key
    again = {m["step"]: m["loss_d"] for m in read_metrics(resumed_dir)}
    assert {m["step"]: m["loss_d"] for m in read_metrics(zero2_run) if m["step"] > 1} == again


def test_engine_config_refuses_what_the_pair_cannot_do(tmp_path: Path) -> None:
    """The engines' config, and the gate's refusal of a DeepSpeed file the pair cannot run."""
    from trainer.accel.zero import engine_config
    from trainer.core.gate import deepspeed_file
    from trainer.errors import TrainerError

    config = engine_config("2", 16)
    assert config["zero_optimization"]["stage"] == 2 and config["train_micro_batch_size_per_gpu"] == 16
    assert config["gradient_clipping"] == 0.0 and not config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    refused = {
        "ZeRO-3": {"zero_optimization": {"stage": 3}},
        "casts the weights": {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
        "optimizer": {"zero_optimization": {"stage": 1}, "optimizer": {"type": "Adam"}},
    }
    for why, content in refused.items():
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(content))
        with pytest.raises(TrainerError, match=why):
            deepspeed_file(str(path), given=True)


def test_config_checks_deepspeed_and_timeout_keys() -> None:
    from trainer.core.gate import configure
    from trainer.errors import TrainerError

    assert configure(None, ("train.deepspeed=2", "train.timeout_s=30")).train.deepspeed == "2"
    for bad, why in (("train.deepspeed=3", "neither a ZeRO stage"), ("train.timeout_s=0", "at least 1")):
        with pytest.raises(TrainerError, match=why):
            configure(None, (bad,))


def test_channels_last_is_refused_under_deepspeed(tmp_path: Path) -> None:
    """ZeRO flattens the weights, which NHWC weights cannot be (unset, channels_last stays off under DeepSpeed)."""
    args = (f"run.dir={tmp_path / 'run'}", *STEP, "train.deepspeed=2", "speed.channels_last=true")
    proc = torchrun_train(2, *args)
    assert proc.returncode != 0  # each rank exits 2; torchrun reports a failed child as 1
    assert proc.stderr.count("error: speed.channels_last=true cannot run under DeepSpeed") == 1  # rank 0 says it
