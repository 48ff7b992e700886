"""`python -m trainer.bench` in a tiny configuration: it runs, and its JSON has every field (no speed assertion)."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import ok, run_cmd
from torch import nn

from trainer.bench.race import main as bench_main
from trainer.core.losses import gradient_penalty
from trainer.metrics.flops import count_flops, peak_tflops

TINY_BENCH = [
    "--warmup", "1", "--rounds", "2", "--round-seconds", "0.01", "--split-steps", "1", "--threads", "1",
    "model.width=8", "model.z_dim=16", "train.batch_size=16", "train.n_critic=2",
]  # fmt: skip
SIDE_FIELDS = {
    "gen_it_per_s", "critic_img_per_s", "ms_per_step", "cpu_ms_per_step", "time_split_ms", "penalty_share",
    "peak_mem_mb", "flops_per_step", "achieved_tflops", "fraction_of_peak", "rounds_it_per_s", "fp32_modes",
    "cudnn_benchmark", "warmup_s",
}  # fmt: skip
TOP_FIELDS = {
    "speedup", "speedup_of_medians", "speedup_cpu_time", "contenders", "against", "device", "precision", "threads",
    "world_size", "peak_tflops", "peak_basis", "peak_mem_basis", "rounds", "warmup_steps", "synthetic_images", "config",
    "scaling",
}  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bench_against_the_reference_writes_every_field(tmp_path):
    """The real entry point, `python -m trainer.bench`, in a subprocess."""
    out = tmp_path / "bench.json"
    proc = ok(run_cmd([sys.executable, "-m", "trainer.bench", *TINY_BENCH, "--out", str(out)]))
    assert "trainer vs reference" in proc.stdout and "GFLOP per step" in proc.stdout
    for line in proc.stdout.splitlines()[2:12]:  # the table: a label, then one cell per contender, never glued
        if line.startswith(("critic/penalty/gen ms", "generator it/s", "peak memory MB")):
            assert len(re.split(r"\s{2,}", line.strip())) == 3, line
    res = json.loads(out.read_text())
    assert set(res) == TOP_FIELDS | {"trainer", "reference"} and res["contenders"] == ["trainer", "reference"]
    for side in (res["trainer"], res["reference"]):
        assert set(side) == SIDE_FIELDS
        assert set(side["time_split_ms"]) == {"critic", "penalty", "generator"}
        assert side["gen_it_per_s"] > 0 and len(side["rounds_it_per_s"]) == 2
        assert side["warmup_s"] > 0  # one untimed step (--warmup 1)
        assert side["critic_img_per_s"] == pytest.approx(side["gen_it_per_s"] * 2 * 16)
        assert 0 < side["penalty_share"] < 1 and side["time_split_ms"]["penalty"] > 0
    assert math.isfinite(res["speedup"]) and res["speedup"] > 0
    _gpu_summary_reads(out, res)
    # The same networks and math: equal FLOPs, less the gradient into the interpolates the trainer skips (< 3%).
    t, r = res["trainer"]["flops_per_step"], res["reference"]["flops_per_step"]
    assert 0.97 * r <= t <= r
    assert res["device"] == "cpu" and res["peak_tflops"] is None and res["trainer"]["fraction_of_peak"] is None
    assert res["config"]["model"]["width"] == 8 and res["threads"] == 1


def test_bench_under_torchrun_reports_each_process_and_the_scaling(tmp_path):
    """2 gloo processes against a 1-process result of the same config: per-process it/s, their sum in images/s and
    the weak-scaling efficiency, recomputed here from the two JSON files."""
    one, two = tmp_path / "1.json", tmp_path / "2.json"
    ok(run_cmd([sys.executable, "-m", "trainer.bench", *TINY_BENCH, "--out", str(one)]))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launch, "-m", "trainer.bench", *TINY_BENCH, "--baseline", str(one), "--out", str(two)]
    proc = ok(run_cmd(cmd, env={"ACCELERATE_USE_CPU": "1"}))
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    s = double["scaling"]
    assert double["world_size"] == 2 and len(s["per_rank_gen_it_per_s"]) == 2
    assert s["per_rank_gen_it_per_s"][0] == pytest.approx(double["trainer"]["gen_it_per_s"])
    assert s["aggregate_critic_img_per_s"] == pytest.approx(sum(s["per_rank_gen_it_per_s"]) * 2 * 16)
    assert s["efficiency"] == pytest.approx(sum(s["per_rank_gen_it_per_s"]) / 2 / single["trainer"]["gen_it_per_s"])
    assert "2 processes: it/s per process" in proc.stdout and "efficiency" in proc.stdout
    bad = run_cmd([sys.executable, "-m", "trainer.bench", *TINY_BENCH, "train.n_critic=3", "--baseline", str(one)])
    assert bad.returncode == 2 and "is not a 1-process run of this config" in bad.stderr


def test_bench_on_synthetic_mnist_shaped_data_against_a_trainer_variant(tmp_path, capsys):
    """The seed DCGAN preset at 28x28 without MNIST files; --against races two trainer configurations."""
    out, mnist = tmp_path / "bench.json", ["data.name=mnist", "data.image_size=28", "model.name=dcgan28"]
    args = ["--synthetic", "64", "--peak-tflops", "1", "--against", "speed.fused_adam=false", "--out", str(out)]
    assert bench_main([*TINY_BENCH, *args, *mnist, "speed.fused_adam=true"]) == 0
    assert "trainer vs baseline" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["contenders"] == ["trainer", "baseline"] and res["against"] == "speed.fused_adam=false"
    assert res["synthetic_images"] == 64 and res["peak_tflops"] == 1.0
    assert 0 < res["trainer"]["fraction_of_peak"] < 1
    assert res["trainer"]["flops_per_step"] == res["baseline"]["flops_per_step"]  # same math, other Adam kernel


def test_bench_without_the_dataset_says_how_to_run_offline(tmp_path, capsys):
    assert bench_main(["data.name=mnist", "data.image_size=28", "model.name=dcgan28", f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "--synthetic" in err and "not found" in err


def test_count_flops_matches_a_closed_form_and_survives_the_double_backward():
    n, d = 8, 32
    linear = nn.Linear(d, 1, bias=False)
    x, y = torch.randn(n, d), torch.randn(n, d)
    assert count_flops(lambda: linear(x)) == 2 * n * d  # one (n, d) x (d, 1) matmul
    penalty = count_flops(lambda: gradient_penalty(linear, x, y)[0].backward())
    assert penalty >= 2 * 2 * n * d  # at least the forward and the input-gradient matmul, and it did not raise


def test_peak_table_by_device_name_and_override(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_tflops(cuda, "bf16", False)[0] == 989.0
    assert peak_tflops(cuda, "no", True)[0] == 494.0 and peak_tflops(cuda, "no", False)[0] == 67.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_tflops(cuda, "bf16", False)[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    assert peak_tflops(cuda, "bf16", False)[0] is None and peak_tflops(cuda, "bf16", False, 123.0)[0] == 123.0
    assert peak_tflops(torch.device("cpu"), "no", False)[0] is None


def _gpu_summary_reads(bench_json, res: dict) -> None:
    """tests/gpu_summary.py (what tests/gpu_checks.sh ends with) on this real bench result, a skipped stage and a
    failed one: gpu_checks.json carries the bench's own figures, and the table row prints them."""
    out = bench_json.parent / "gpu-out"
    (out / "parts").mkdir(parents=True)
    (out / "bench-resnet32-graph.json").write_text(bench_json.read_text())
    (out / "parts" / "skip-bench-resnet64-graph.json").write_text('{"skipped": "needs up to 75 s, 40 s left"}')
    (out / "parts" / "bench-resnet32-compile-failed.json").write_text('{"exit": 124, "args": "speed.compile=true"}')
    proc = ok(run_cmd([sys.executable, "tests/gpu_summary.py", str(out)]))
    summary = json.loads((out / "gpu_checks.json").read_text())
    row = summary["benches"]["resnet32-graph"]
    assert row["speedup"] == res["speedup"] and row["trainer_ms_per_step"] == res["trainer"]["ms_per_step"]
    assert row["baseline"] == "reference" and row["speed"] == res["config"]["speed"]
    assert row["warmup_s"] == [res["trainer"]["warmup_s"], res["reference"]["warmup_s"]]
    assert summary["skipped"] == {"bench-resnet64-graph": "needs up to 75 s, 40 s left"}
    assert summary["failed_benches"]["resnet32-compile"]["exit"] == 124
    assert f"| resnet32-graph | {res['trainer']['ms_per_step']:.1f} |" in proc.stdout
    assert "not measured: bench-resnet64-graph" in proc.stdout
