"""Metrics and tracking: a real W&B offline run read back with `wandb leet inspect`, and the metrics file's contents."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from conftest import TINY, ok, python_train, read_metrics, torchrun_train

LOGGED = {"loss_d", "loss_g", "wasserstein", "penalty", "grad_norm", "grad_norm_std", "grad_norm_max", "d_real"}
LOGGED |= {"lr_d", "lr_g", "imgs_per_s", "time_critic_ms", "time_penalty_ms", "time_generator_ms", "peak_mem_mb"}


def _inspect(run_dir: Path) -> dict:
    wandb = shutil.which("wandb") or str(Path(__import__("sys").executable).with_name("wandb"))
    run = next((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_wandb_offline_run_has_config_metrics_step_and_images(run_dir: Path) -> None:
    args = (f"run.dir={run_dir}", "train.steps=4", *TINY, "log.every=2", "log.sample_every=2", "log.tracker=wandb")
    ok(python_train(*args, "loss.gp_weight=7.5"))
    run = _inspect(run_dir)
    assert run["config"]["loss"]["gp_weight"] == 7.5 and run["config"]["train"]["steps"] == 4
    assert run["step"] == 4 and run["state"] == "finished"
    assert LOGGED <= run["summary"].keys()
    assert run["summary"]["samples"]["_type"].startswith("images")
    assert len(list((run_dir / "wandb").glob("offline-run-*/files/media/images/samples_*.png"))) == 2
    last = read_metrics(run_dir)[-1]
    for key in LOGGED - {"imgs_per_s", "time_critic_ms", "time_penalty_ms", "time_generator_ms", "peak_mem_mb"}:
        assert math.isclose(run["summary"][key], last[key], rel_tol=1e-6), key  # the same numbers in both places


def test_resumed_run_continues_the_same_wandb_run(run_dir: Path) -> None:
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY, "log.tracker=wandb"))
    ok(python_train(f"run.dir={run_dir}", "train.steps=3", "run.resume=latest", *TINY, "log.tracker=wandb"))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id


def test_two_rank_metrics_are_reduced_over_ranks(run_dir: Path) -> None:
    """grad_norm_max is the max over both ranks' samples, so it bounds the mean; std is finite and >= 0."""
    ok(torchrun_train(2, f"run.dir={run_dir}", "train.steps=2", *TINY))
    for record in read_metrics(run_dir):
        assert LOGGED <= record.keys() and record["world_size"] == 2
        assert record["grad_norm_max"] >= record["grad_norm"] > 0 and record["grad_norm_std"] >= 0


def test_tensorboard_run_has_hparams_scalars_and_images(run_dir: Path) -> None:
    """log.tracker=tensorboard: the event files under the run folder, read back with TensorBoard's own reader, hold
    the config as flat hparams and the same numbers as metrics.jsonl; without the package, a config error."""
    import importlib.util

    args = (f"run.dir={run_dir}", "train.steps=4", *TINY, "log.every=2", "log.sample_every=2", "loss.gp_weight=7.5")
    proc = python_train(*args, "log.tracker=tensorboard")
    if importlib.util.find_spec("tensorboard") is None:
        assert proc.returncode == 2 and "pip install tensorboard" in proc.stderr and "Traceback" not in proc.stderr
        return
    ok(proc)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def events(folder: Path) -> EventAccumulator:
        return EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()

    loaded = [events(f.parent) for f in sorted(run_dir.rglob("events.out.tfevents.*"))]  # each read once

    def hparams(accumulator: EventAccumulator) -> dict:
        try:
            return accumulator.PluginTagToContent("hparams")
        except KeyError:  # an event file without hparams (the scalars' own)
            return {}

    tagged = [hparams(a) for a in loaded]
    content = next(t["_hparams_/session_start_info"] for t in tagged if "_hparams_/session_start_info" in t)
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert start["loss.gp_weight"].number_value == 7.5 and start["train.steps"].number_value == 4
    assert start["loss.name"].string_value == "wgan-gp" and start["optim.lr_d"].string_value == "null"
    main = next(a for a in loaded if a.Tags()["scalars"])
    assert LOGGED <= set(main.Tags()["scalars"])
    logged = {m["step"]: m for m in read_metrics(run_dir)}
    for key in ("loss_d", "wasserstein", "penalty", "grad_norm"):
        points = {e.step: e.value for e in main.Scalars(key)}
        assert points.keys() == logged.keys() == {2, 4}
        assert all(math.isclose(points[s], logged[s][key], rel_tol=1e-6) for s in points), key
    assert [e.step for e in main.Images("samples")] == [2, 4]


def test_evaluation_during_training_and_summary(run_dir: Path) -> None:
    toy = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
    args = (f"run.dir={run_dir}", "train.steps=4", *TINY, *toy, "log.every=3", "eval.every=2", "eval.num=200")
    ok(python_train(*args))
    records = read_metrics(run_dir)
    assert [m["step"] for m in records] == [2, 3, 4]  # eval steps 2 and 4 log too, besides log step 3
    w1 = {m["step"]: m["eval_w1"] for m in records if "eval_w1" in m}
    assert set(w1) == {2, 4} and all(v > 0 for v in w1.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_w1"]["last"] == w1[4] and summary["eval_w1"]["best"] == min(w1.values())
    assert summary["eval_w1"]["best_step"] == min(w1, key=w1.get)
