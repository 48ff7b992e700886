"""DeepSpeed ZeRO-2 for both networks on CPU (gloo, 2 ranks, the real train.py under torchrun): DDP step, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, ok, read_metrics, torchrun_train
from safetensors.torch import load_file

pytest.importorskip("deepspeed", reason="DeepSpeed is the `deepspeed` extra: pip install -e '.[deepspeed]'")

# Adam (the WGAN-GP default) on the tiny image pair; no EMA in the comparison with DDP, EMA on in the resume test.
STEP = [*TINY, "train.n_critic=1", "seed=5"]
# Float32 reduction order differs (DDP all-reduce vs ZeRO-2 reduce-scatter into flat partitions); one Adam step
# moves each weight by about lr = 1e-4, so 1e-6 tells a different update from rounding.
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
    """Three steps under ZeRO-2 with a checkpoint after each."""
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    ok(torchrun_train(2, f"run.dir={run_dir}", *STEP, "train.steps=3", "train.deepspeed=2", "checkpoint.every=1",
                      "checkpoint.keep=0"))  # fmt: skip
    return run_dir


def test_zero2_step_equals_ddp_step(zero2_run: Path, tmp_path: Path) -> None:
    ddp_dir = tmp_path / "ddp"
    ok(torchrun_train(2, f"run.dir={ddp_dir}", *STEP, "train.steps=1"))
    ddp, zero = ddp_dir / "checkpoints" / "step-00000001", zero2_run / "checkpoints" / "step-00000001"
    assert (zero / "pytorch_model_1").is_dir() and not (ddp / "pytorch_model_1").exists()  # engines vs DDP
    prints = _state(zero)["fingerprints"]
    assert _state(zero)["world_size"] == 2 and len(prints) == 2 and prints[0] == prints[1]  # replicas agree
    worst, moved = 0.0, 0.0
    for index in (0, 1):  # generator, critic: one critic step, then one generator step
        want, got = _ddp_weights(ddp, index), _engine_weights(zero, index)
        later = _engine_weights(zero2_run / "checkpoints" / "step-00000003", index)
        assert want.keys() == got.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=ATOL, msg=key)
            worst = max(worst, (got[key] - value).abs().max().item())
            if "running_" not in key and "num_batches" not in key:  # parameters, not batch-norm statistics
                moved = max(moved, (later[key] - got[key]).abs().max().item())
    assert moved > 100 * ATOL, "two more steps moved no weight by more than the tolerance: the test is vacuous"
    print(f"ZeRO-2 vs DDP after one step: max |difference| {worst:.2e}; two more steps move weights by {moved:.2e}")


def test_zero2_resume_equals_uninterrupted(zero2_run: Path, tmp_path: Path) -> None:
    resumed_dir = tmp_path / "resumed"
    proc = ok(torchrun_train(2, f"run.dir={resumed_dir}", *STEP, "train.steps=3", "train.deepspeed=2",
                             f"run.resume={zero2_run}/checkpoints/step-00000001"))  # fmt: skip
    assert "at step 1;" in proc.stdout
    want, got = zero2_run / "checkpoints" / "step-00000003", resumed_dir / "checkpoints" / "step-00000003"
    assert _state(got)["fingerprints"] == _state(want)["fingerprints"]  # both ranks, both networks, bit for bit
    for name in ("ema.safetensors", "generator.safetensors"):
        for key, value in load_file(str(want / name)).items():
            assert torch.equal(load_file(str(got / name))[key], value), f"{name}: {key}"
    for index in (0, 1):  # the ZeRO-partitioned Adam moments came back too, or step 3 would differ
        for key, value in _engine_weights(want, index).items():
            assert torch.equal(_engine_weights(got, index)[key], value), key
    again = {m["step"]: m["loss_d"] for m in read_metrics(resumed_dir)}
    assert {m["step"]: m["loss_d"] for m in read_metrics(zero2_run) if m["step"] > 1} == again
