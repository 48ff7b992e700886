"""The converged budget's plumbing (trainer/converged.py) at a tiny size: real train.py chunks, WGAN-GP to its step
cap, a baseline to WGAN-GP's steps, an equal-time objective extended to WGAN-GP's seconds, shipping, the tables, and
an interrupted budget continued by the same command. The seconds are a stand-in clock (so the plan is exact);
everything else is the real thing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from trainer import converged
from trainer.export import GANGenerator

RATE = {"wgan-gp": 5.0, "gan": 1.0, "r3gan": 2.5}  # stand-in seconds per generator step


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Chunks of 2 steps, WGAN-GP capped at 2 (its target never holds), 16-wide MLPs; train_chunk trains for real
    and reports RATE seconds per step trained. Its call number `stop_at` trains one step short and is stopped."""
    never = converged.Target("never", lambda m, f: False, chunk=2, max_steps=2)
    monkeypatch.setattr(converged, "TARGETS", {"8gaussians": never})
    config = "configs/8gaussians.yaml"  # two recipes: the second tried because the first misses the target
    monkeypatch.setattr(converged, "RECIPES", {"8gaussians": {"8gaussians": config, "8gaussians-b": config}})
    width = ["model.width=16", "train.batch_size=32", "log.every=1"]
    losses = {loss: [*converged.LOSSES[loss], *width] for loss in RATE}
    monkeypatch.setattr(converged, "LOSSES", losses)
    monkeypatch.setattr(converged, "EQUAL_TIME", ("r3gan",))
    monkeypatch.setattr(converged, "TOY_NUM", 300)
    real, calls = converged.train_chunk, {"n": 0, "stop_at": None}

    def clocked(keys: list[str], dataset: str, steps: int) -> float:
        calls["n"] += 1
        run_dir = next(k.split("=", 1)[1] for k in keys if k.startswith("run.dir="))
        stop = calls["n"] == calls["stop_at"]
        before = max((int(c.name.split("-")[1]) for c in Path(run_dir).glob("checkpoints/step-*")), default=0)
        real(keys, dataset, steps - stop)  # stopped: its checkpoint a step short, as a SIGTERM leaves it
        seconds = (steps - stop - before) * RATE[Path(run_dir).name]
        if stop:
            raise converged.Stopped(3.0)
        return seconds

    monkeypatch.setattr(converged, "train_chunk", clocked)
    paths = {"runs": tmp_path / "runs", "out": tmp_path / "docs", "models": tmp_path / "models"}
    return {"calls": calls, **paths}


def budget(t: dict) -> int:
    return converged.main(["8gaussians"], t["runs"], t["out"], t["models"], None)


def progress(t: dict, loss: str, recipe: str = "8gaussians-b") -> dict:
    return json.loads((t["runs"] / recipe / loss / "progress.json").read_text())


def test_the_budget_trains_to_each_goal_ships_tabulates_and_continues_when_stopped(tiny: dict) -> None:
    tiny["calls"]["stop_at"] = 3  # the GAN's chunk: stopped after a checkpoint at step 1
    assert budget(tiny) == 75
    gan = progress(tiny, "gan")
    assert gan["chunks"] == [] and gan["interrupted_seconds"] == 3.0 and not gan["done"]
    assert (tiny["runs"] / "8gaussians-b" / "gan" / "checkpoints" / "step-00000001").is_dir()
    assert budget(tiny) == 0  # the same command continues
    steps = {loss: [c["step"] for c in progress(tiny, loss)["chunks"]] for loss in RATE}
    # WGAN-GP to its cap (2 steps, 10 s), both recipes; beside the second, the GAN to WGAN-GP's steps (its stopped
    # checkpoint at step 1 scored first, with the 3 s that bought it) and R3GAN on to WGAN-GP's 10 s at 2.5 s a step
    assert steps == {"wgan-gp": [2], "gan": [1, 2], "r3gan": [2, 4]}
    assert progress(tiny, "gan")["chunks"][0]["seconds"] == 3.0 and progress(tiny, "gan")["interrupted_seconds"] == 0
    assert [c["step"] for c in progress(tiny, "wgan-gp", "8gaussians")["chunks"]] == [2]
    assert sorted(p.parent.name for p in tiny["runs"].glob("*/*/progress.json")) == [
        "gan",
        "r3gan",
        "wgan-gp",
        "wgan-gp",
    ]
    seconds = {loss: converged.trained_seconds(progress(tiny, loss)) for loss in RATE}
    assert seconds == {"wgan-gp": 10.0, "gan": 3.0 + 1 * 1.0, "r3gan": 10.0}  # stopped seconds count
    for loss in RATE:
        record = progress(tiny, loss)
        assert record["done"] and record["converged"] is (False if loss == "wgan-gp" else None)
        assert not (tiny["runs"] / "8gaussians-b" / loss / "checkpoints").exists()  # shipped: checkpoints gone
        assert set(record["chunks"][-1]["metrics"]) >= {"modes_covered", "high_quality", "w1"}
    # Only WGAN-GP's generators are exported; they load and sample
    assert sorted(p.name for p in tiny["models"].iterdir()) == ["8gaussians-b-wgan-gp", "8gaussians-wgan-gp"]
    card = (tiny["models"] / "8gaussians-b-wgan-gp" / "README.md").read_text()
    assert "## Converged budget" in card and "not met (step cap) at generator step 2" in card
    assert GANGenerator.from_pretrained(str(tiny["models"] / "8gaussians-b-wgan-gp")).sample(5, seed=0).shape == (5, 2)
    pictures = {p.name for p in tiny["out"].glob("converged-*.png")}
    names = ("b", "b-gan", "b-r3gan", "b-r3gan-equal-time", "b-wgan-gp", "wgan-gp")
    assert pictures == {f"converged-8gaussians-{name}.png" for name in names}
    with Image.open(tiny["out"] / "converged-8gaussians-b.png") as row:  # the Figure 1 row: one panel per loss
        assert row.size[0] > 2.5 * row.size[1]
    text = (tiny["out"] / "quality-converged.md").read_text()
    equal_steps, equal_time = text.split("At equal wall-clock time")
    rows = lambda part: re.findall(r"^\| (\S+) \| (\S+) \| never \| ([\d,]+) \| ([\d.]+) min", part, re.M)  # noqa: E731
    first, second = "8gaussians", "8gaussians-b"
    assert rows(equal_steps) == [(first, "wgan-gp", "2", "0.2"), (second, "wgan-gp", "2", "0.2"),
                                 (second, "gan", "2", "0.1"), (second, "r3gan", "2", "0.1")]  # fmt: skip
    assert rows(equal_time) == [(second, "wgan-gp", "2", "0.2"), (second, "r3gan", "4", "0.2")]
    assert len(json.loads((tiny["out"] / "quality-converged.json").read_text())) == 4
    # Finished: the same command again trains nothing and writes the same tables
    calls = tiny["calls"]["n"]
    assert budget(tiny) == 0 and tiny["calls"]["n"] == calls
    assert (tiny["out"] / "quality-converged.md").read_text() == text
    # A run with more to train whose checkpoints are gone (git keeps no checkpoints) is trained again from step 0,
    # not "resumed" from nothing
    path = tiny["runs"] / "8gaussians-b" / "r3gan" / "progress.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "chunks": record["chunks"][:1]}))
    assert budget(tiny) == 0 and tiny["calls"]["n"] == calls + 2
    again = progress(tiny, "r3gan")
    assert [c["step"] for c in again["chunks"]] == [2, 4] and again["chunks"][0]["metrics"] == record["chunks"][0][
        "metrics"
    ]


def test_an_equal_time_run_stopped_past_its_time_ends_at_its_checkpoint(tiny: dict) -> None:
    """R3GAN stopped in its equal-time chunk (2 -> 4) at step 3 after 3 s, leaving 2 of WGAN-GP's 10 s: less than a
    step at its rate. The checkpoint at 3 is its last chunk, scored, with those seconds; it is never asked to train to
    fewer steps than it holds (train.py refuses), nor dropped for the step-2 chunk."""
    tiny["calls"]["stop_at"] = 5  # WGAN-GP, WGAN-GP, the GAN, R3GAN to 2, R3GAN to 4: stopped at 3
    assert budget(tiny) == 75
    assert progress(tiny, "r3gan")["interrupted_seconds"] == 3.0
    assert budget(tiny) == 0 and tiny["calls"]["n"] == 5  # nothing more trained: the seconds are spent
    record = progress(tiny, "r3gan")
    assert [(c["step"], c["seconds"]) for c in record["chunks"]] == [(2, 5.0), (3, 3.0)] and record["done"]
    assert set(record["chunks"][-1]["metrics"]) >= {"modes_covered", "high_quality", "w1"}
    equal_time = (tiny["out"] / "quality-converged.md").read_text().split("At equal wall-clock time")[1]
    assert re.search(r"^\| 8gaussians-b \| r3gan \| never \| 3 \| 0\.1 min", equal_time, re.M), equal_time


def test_a_recipe_with_a_fixed_schedule_span_stops_there(tmp_path: Path) -> None:
    """A recipe whose learning rates decay to 0 at train.schedule_steps is capped there (a chunk past it would train
    nothing, and the gate refuses it), in whole chunks or the part of one left; no span leaves the dataset's cap."""
    config = tmp_path / "span.yaml"
    config.write_text("train:\n  schedule_steps: 5000\n")
    assert converged.span(str(config)) == 5000 and converged.span("configs/mnist5k-mlp.yaml") == float("inf")
    assert converged.span("configs/mnist5k-mlp-fast.yaml") == 20000
    cap = min(40000, converged.span(str(config)))
    target = converged.Target("never", lambda m, f: False, chunk=2000, max_steps=cap)
    progress = {"floor": 1.0, "chunks": [{"step": s, "seconds": 1.0, "metrics": {}} for s in (2000, 4000)]}
    assert converged.next_step(progress, target, converged.Goal()) == 5000  # the part of a chunk left
    progress["chunks"].append({"step": 5000, "seconds": 1.0, "metrics": {}})
    assert converged.next_step(progress, target, converged.Goal()) is None


def test_a_baseline_beside_a_recipe_with_its_own_rates_trains_with_its_papers_optimizer(tmp_path: Path) -> None:
    """mnist5k-mlp-fast sets WGAN-GP's rates and schedule; the baselines beside it reset exactly those keys to their
    loss's paper defaults, and a recipe that sets none keeps the keys its finished runs were recorded with."""
    from trainer.core.gate import configure

    fast = "configs/mnist5k-mlp-fast.yaml"
    keys = converged.base_overrides("mnist5k", "gan", tmp_path, 2000, fast)
    cfg = configure(str(converged.ROOT / fast), tuple(keys))
    assert (cfg.optim.lr_d, cfg.optim.lr_g, cfg.optim.schedule, cfg.train.schedule_steps) == (
        None,
        None,
        "constant",
        None,
    )
    assert converged.base_overrides("mnist5k", "wgan-gp", tmp_path, 2000, fast) == converged.base_overrides(
        "mnist5k", "wgan-gp", tmp_path, 2000
    )
    toy = converged.base_overrides("8gaussians", "gan", tmp_path, 2000, "configs/8gaussians.yaml")
    assert toy == converged.base_overrides("8gaussians", "gan", tmp_path, 2000)


def test_baselines_train_beside_the_recipe_that_met_the_target_or_came_closest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No recipe meets the digits' target: the baselines train beside the one with the lowest FD ratio (not the last
    one tried, which may have stalled); a recipe that meets it ends the search and takes them."""
    fds = {"a": 9.0, "b": 5.0, "c": 12.0}  # classifier FD of each recipe's WGAN-GP run; floor 2.0
    calls: list[tuple[str, str]] = []

    def fake_run(dataset, recipe, loss, runs, cache_dir, goal) -> dict:
        calls.append((recipe, loss))
        metrics = {"fd_classifier": fds[recipe], "classes_covered": 10}
        met = converged.TARGETS["mnist5k"].met(metrics, 2.0) if loss == "wgan-gp" else None
        return {"recipe": recipe, "loss": loss, "floor": 2.0, "converged": met, "interrupted_seconds": 0.0,
                "chunks": [{"step": 4, "seconds": 1.0, "metrics": metrics}]}  # fmt: skip

    monkeypatch.setattr(converged, "run", fake_run)
    for name in ("ship", "panel", "table"):
        monkeypatch.setattr(converged, name, lambda *a, **k: "")
    monkeypatch.setattr(converged, "every_record", lambda runs: [])
    monkeypatch.setattr(converged, "RECIPES", {"mnist5k": {r: "configs/mnist5k-mlp.yaml" for r in fds}})
    monkeypatch.setattr(converged, "EQUAL_TIME", ())
    assert converged.main(["mnist5k"], tmp_path / "runs", tmp_path / "docs", tmp_path / "models", None) == 0
    baselines = {recipe for recipe, loss in calls if loss != "wgan-gp"}
    assert [r for r, loss in calls if loss == "wgan-gp"] == ["a", "b", "c"] and baselines == {"b"}
    calls.clear()
    fds["b"] = 3.9  # <= 2x the floor: met, so "c" is never tried
    assert converged.main(["mnist5k"], tmp_path / "runs", tmp_path / "docs", tmp_path / "models", None) == 0
    assert [r for r, loss in calls if loss == "wgan-gp"] == ["a", "b"]
    assert {recipe for recipe, loss in calls if loss != "wgan-gp"} == {"b"}


def test_a_stop_between_chunks_still_writes_the_tables_and_exits_75(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM while the budget scores, exports or starts a run (no train.py to forward it to): the tables of the
    runs so far are written, the exit is 75, and the caller's handler is back afterwards."""
    import os
    import signal
    import time

    calls: list[str] = []

    def fake_run(dataset, recipe, loss, runs, cache_dir, goal) -> dict:
        calls.append(loss)
        if len(calls) == 2:  # the first baseline's start-up
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            return {}
        metrics = {"fd_classifier": 5.0, "classes_covered": 10}
        return {"recipe": recipe, "loss": loss, "floor": 2.0, "converged": False, "interrupted_seconds": 0.0,
                "chunks": [{"step": 4, "seconds": 1.0, "metrics": metrics}]}  # fmt: skip

    written: list[list] = []
    monkeypatch.setattr(converged, "run", fake_run)
    monkeypatch.setattr(converged, "ship", lambda *a, **k: None)
    monkeypatch.setattr(converged, "every_record", lambda runs: [{"written": True}])
    monkeypatch.setattr(converged, "table", lambda every: written.append(every) or "the table")
    monkeypatch.setattr(converged, "RECIPES", {"mnist5k": {"a": "configs/mnist5k-mlp.yaml"}})
    seen: list[int] = []
    caller = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # the caller's: records only
    try:
        code = converged.main(["mnist5k"], tmp_path / "runs", tmp_path / "docs", tmp_path / "models", None)
        assert code == 75 and len(calls) == 2 and seen == []  # the budget's handler took it, not the caller's
        assert written == [[{"written": True}]] and (tmp_path / "docs" / "quality-converged.md").is_file()
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # restored
    finally:
        signal.signal(signal.SIGTERM, caller)


def test_the_table_holds_every_run_folder_in_the_budgets_order(tmp_path: Path) -> None:
    """The tables are written from every run folder's progress.json (a `--datasets` subset keeps the other rows),
    in the budget's order, leaving out a run stopped before its first score."""
    runs = {("swissroll", "swissroll", "gan"): [1], ("8gaussians", "8gaussians", "gan"): [1],
            ("8gaussians", "8gaussians", "wgan-gp"): [1], ("mnist5k", "mnist5k", "wgan-gp"): []}  # fmt: skip
    for (dataset, recipe, loss), chunks in runs.items():
        folder = tmp_path / recipe / loss
        folder.mkdir(parents=True)
        record = {"dataset": dataset, "recipe": recipe, "loss": loss, "chunks": [{"step": s} for s in chunks]}
        (folder / "progress.json").write_text(json.dumps(record))
    order = [(r["dataset"], r["loss"]) for r in converged.every_record(tmp_path)]
    assert order == [("8gaussians", "wgan-gp"), ("8gaussians", "gan"), ("swissroll", "gan")]
