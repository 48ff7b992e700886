"""`python -m trainer.reproduce --budget converged`: WGAN-GP trained until it meets a stated target, then the baselines.

Each WGAN-GP run is the real train.py, extended chunk by chunk (`run.resume=latest` with a higher `train.steps`; the
toy and digit recipes use a constant learning rate, so a run extended in chunks is the run trained in one go) and
scored after every chunk by trainer.metrics.evaluate, until its dataset's target holds or its step cap is reached.
Weight clipping and the GAN then train to the same number of generator steps. Every chunk's figures and seconds are
kept in the run folder's `progress.json`, so an interrupted budget (a stopped process, the end of a session) picks up
from its run folders next time. A finished run's generator is exported (`trainer.export`) into `models/` and its
checkpoints are removed; its last toy picture (samples over the critic's contours) goes to the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from trainer.converged_report import annotate, panel, table, trained_seconds
from trainer.recipes import CONFIGS, LOSSES

ROOT = Path(__file__).resolve().parent.parent
TOY_NUM, DIGITS_NUM = 2000, 1000  # generated samples per score (digits: as many as the held-out baseline's)
FLOOR_DRAWS = 5  # independent real toy sets averaged for the real-vs-real W1 floor


@dataclass(frozen=True)
class Target:
    """When a dataset's WGAN-GP run counts as converged; `floor` is the real-vs-real figure the test compares with."""

    text: str
    met: Callable[[dict, float], bool]
    chunk: int  # generator steps between scores (and checkpoints)
    max_steps: int  # where the run stops if the target never holds
    miss: Callable[[dict, float], float] = lambda m, f: 0.0  # how far a run is from it (lower is closer)


TARGETS = {
    "8gaussians": Target("8/8 modes, high-quality share >= 0.9",
                         lambda m, f: m["modes_covered"] == 8 and m["high_quality"] >= 0.9, 2000, 40000),
    "mnist5k": Target("classifier FD <= 2x real-vs-real, 10/10 classes",
                      lambda m, f: m["fd_classifier"] <= 2 * f and m["classes_covered"] == 10, 2000, 40000,
                      lambda m, f: m["fd_classifier"] / f + (10 - m["classes_covered"])),
    "25gaussians": Target(">= 24/25 modes", lambda m, f: m["modes_covered"] >= 24, 2000, 40000),
    "swissroll": Target("W1 <= 1.5x real-vs-real", lambda m, f: m["w1"] <= 1.5 * f, 2000, 40000),
}  # fmt: skip
# The two Gaussian toys first (they converged within the cap at the paper's settings), then the digits, whose fast
# recipe (mnist5k-mlp-fast) takes about half an hour, then the Swiss roll.
ORDER = ("8gaussians", "25gaussians", "mnist5k", "swissroll")
# Each dataset's WGAN-GP recipes (run folder name: config), tried in turn: the next one only when the one before
# reached its step cap short of the target. The baselines train beside the one that met it, or else beside the one
# that came closest (Target.miss of its last score).
RECIPES = {name: {name: config} for name, config in CONFIGS.items()}
RECIPES["mnist5k"]["mnist5k-mlp-fast"] = "configs/mnist5k-mlp-fast.yaml"  # 1e-3 decayed; 1e-4: 3.63x at the cap
RECIPES["mnist5k"]["mnist5k-mlp-8k"] = "configs/mnist5k-mlp-8k.yaml"  # 2e-3 decayed over 8,000: 2.8x in 5 min
RECIPES["mnist5k"]["mnist5k-conv-8k"] = "configs/mnist5k-conv-8k.yaml"  # conv 5e-4 decayed: 1.62x in one straight run
# configs/mnist5k-conv.yaml (32 px, constant 1e-4) was tried and retired: 7.0x after 10,000 steps and 87 minutes,
# stalled; its folder stays in results/converged/mnist5k-conv/ and its row in the table.


def floor(dataset: str, config: str, cache_dir: Optional[str]) -> float:
    """Real against real: toys the exact W1 between independent real sets of TOY_NUM points and the scorer's own
    reference set (seed 1); mnist5k the held-out digits' classifier FD at the config's image size
    (trainer.metrics.evaluate.real_baseline)."""
    if dataset == "mnist5k":
        from trainer.core.gate import configure
        from trainer.metrics.evaluate import real_baseline

        keys = (f"eval.cache_dir={cache_dir}",) if cache_dir else ()
        return float(real_baseline(configure(str(ROOT / config), keys))["fd_classifier"])
    from trainer.metrics.toy import real_w1

    return real_w1(dataset, TOY_NUM, reference_seed=1, draws=FLOOR_DRAWS)


def recipe_key(config: str, key: str):
    """A key as the recipe's config file sets it (None where it leaves the default)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(ROOT / config), key)


def span(config: str) -> float:
    """A recipe's fixed schedule span (train.schedule_steps): its learning rates reach 0 there, so it is the run's
    cap; no span, no cap of its own."""
    return recipe_key(config, "train.schedule_steps") or float("inf")


# A recipe's own optimizer settings are WGAN-GP's; a baseline beside it trains with its loss's paper optimizer.
OPTIMIZER_KEYS = {
    "optim.lr_d": "null",
    "optim.lr_g": "null",
    "optim.schedule": "constant",
    "train.schedule_steps": "null",
}


def base_overrides(dataset: str, loss: str, run_dir: Path, chunk: int, config: Optional[str] = None) -> list[str]:
    keys = [*LOSSES[loss], "seed=0", f"run.dir={run_dir}", "train.cpu_threads=1", "log.tracker=none"]
    if loss != "wgan-gp" and config is not None:  # only the keys the recipe sets, so other runs' keys stay as they were
        keys += [f"{k}={v}" for k, v in OPTIMIZER_KEYS.items() if recipe_key(config, k) is not None]
    return keys + [f"checkpoint.every={chunk}", "checkpoint.keep=1", f"log.sample_every={chunk}", "eval.every=0"]


class Stopped(Exception):
    """The budget was asked to stop (SIGTERM/SIGINT); the run in progress wrote its checkpoint."""


def _stop_between_chunks(signum: int, frame) -> None:
    raise Stopped(0.0)


def train_chunk(keys: list[str], config: str, steps: int) -> float:
    """train.py to `steps` generator steps, resuming the run folder's newest checkpoint; returns its seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    # eval.at_end=false: the budget scores every chunk itself (score()); train.py's own end-of-run figure would
    # cost a toy chunk 13 s of exact W1 and change nothing it trains or saves.
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / config), *keys,
           "run.resume=latest", f"train.steps={steps}", "eval.at_end=false"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    forward = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731 - the child checkpoints, then exits
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _, err = proc.communicate()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    seconds = time.perf_counter() - start
    if proc.returncode == 75:  # stopped by the signal after writing a checkpoint: resumable
        raise Stopped(seconds)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds


def score(run_dir: Path, dataset: str, cache_dir: Optional[str]) -> dict:
    from trainer.metrics.evaluate import evaluate
    from trainer.run import checkpoint
    from trainer.sample import load_generator

    generator, cfg = load_generator(checkpoint.resolve(run_dir, "latest"), torch.device("cpu"))
    cfg.eval.cache_dir = cache_dir or cfg.eval.cache_dir
    return dict(evaluate(generator, cfg, None, TOY_NUM if dataset != "mnist5k" else DIGITS_NUM, "cpu"))


def _portable(keys: list[str]) -> list[str]:
    """The overrides that define a run, less its folder (the checkout holding it may move between sessions)."""
    return [k for k in keys if not k.startswith("run.dir=")]


@dataclass(frozen=True)
class Goal:
    """Where a run stops: WGAN-GP (steps None) at its dataset's target or step cap; a baseline at `steps` generator
    steps (WGAN-GP's), and then, for the comparison at equal wall-clock time, once its seconds reach `seconds`."""

    steps: Optional[int] = None
    seconds: float = 0.0


def next_step(progress: dict, target: Target, goal: Goal) -> Optional[int]:
    """The generator step the next chunk trains to, or None when the run has reached its goal."""
    chunks = progress["chunks"]
    step = chunks[-1]["step"] if chunks else 0
    if goal.steps is None:  # WGAN-GP: until its target holds or the cap
        reached = chunks and (target.met(chunks[-1]["metrics"], progress["floor"]) or step >= target.max_steps)
        return None if reached else min(step + target.chunk, target.max_steps)
    if step < goal.steps:
        return min(step + target.chunk, goal.steps)
    left = goal.seconds - trained_seconds(progress)
    per_step = chunks[-1]["seconds"] / (step - (chunks[-2]["step"] if len(chunks) > 1 else 0))
    steps = min(target.chunk, int(left / per_step))  # as many as fit in the seconds left, at the last chunk's rate
    return step + steps if steps >= max(1, target.chunk // 10) else None  # a sliver is not worth a start-up


def resumable_step(run_dir: Path) -> int:
    """The step of the newest checkpoint in `run_dir` (0 when there is none)."""
    from trainer.run import checkpoint

    newest = checkpoint.resolve(run_dir, "latest")
    return checkpoint.step_of(newest) if newest is not None else 0


def run(dataset: str, recipe: str, loss: str, runs: Path, cache_dir: Optional[str], goal: Goal) -> dict:
    """One run of the budget (runs/RECIPE/LOSS), continued from its progress.json until its goal. Returns the
    progress record (chunks: step, seconds, metrics; floor; converged: WGAN-GP's target met, None for a baseline)."""
    target, run_dir, config = TARGETS[dataset], runs / recipe / loss, RECIPES[dataset][recipe]
    target = replace(target, max_steps=min(target.max_steps, span(config)))
    keys = base_overrides(dataset, loss, run_dir, target.chunk, config)
    path = run_dir / "progress.json"
    progress = json.loads(path.read_text()) if path.is_file() else None
    if progress and progress["chunks"] and not (run_dir / "checkpoints").is_dir():
        if next_step(progress, target, goal) is not None:  # more to train, nothing to resume: again from step 0
            print(f"{run_dir}: its checkpoints are gone (not kept in git); training it again from step 0", flush=True)
            progress = None
    if progress is None or _portable(progress["overrides"]) != _portable(keys):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        progress = {"dataset": dataset, "loss": loss, "overrides": keys, "target": target.text,
                    "floor": floor(dataset, config, cache_dir), "chunks": [], "interrupted_seconds": 0.0}  # fmt: skip
        path.write_text(json.dumps(progress, indent=1))
    progress.update(recipe=recipe, config=config)
    progress["done"] = False
    stopped_at = resumable_step(run_dir)
    if stopped_at > (progress["chunks"][-1]["step"] if progress["chunks"] else 0):
        # A chunk stopped past the last scored one (a SIGTERM checkpoints where it is) or trained and was not scored:
        # its seconds bought these steps, so they are scored as a chunk of their own before anything trains.
        # Otherwise an equal-time baseline with less time left than it trained would be asked for fewer steps than
        # its checkpoint holds, which train.py refuses.
        metrics = score(run_dir, dataset, cache_dir)
        chunk = {"step": stopped_at, "seconds": progress["interrupted_seconds"], "metrics": metrics, "stopped": True}
        progress["chunks"].append(chunk)
        progress["interrupted_seconds"] = 0.0
        path.write_text(json.dumps(progress, indent=1))
    while (step := next_step(progress, target, goal)) is not None:
        try:
            seconds = train_chunk(keys, config, step)
        except Stopped as stop:
            progress["interrupted_seconds"] += stop.args[0]
            path.write_text(json.dumps(progress, indent=1))
            raise
        try:
            metrics = score(run_dir, dataset, cache_dir)
        except Stopped:  # the chunk trained but was not scored: the next start scores it (resuming at its step)
            progress["interrupted_seconds"] += seconds
            path.write_text(json.dumps(progress, indent=1))
            raise
        progress["chunks"].append({"step": step, "seconds": seconds, "metrics": metrics})
        met = target.met(metrics, progress["floor"])
        progress["converged"] = met if goal.steps is None else None
        print(json.dumps({"recipe": recipe, "loss": loss, "step": step, "seconds": round(seconds, 1),
                          "target_met": met, **metrics}), flush=True)  # fmt: skip
        path.write_text(json.dumps(progress, indent=1))
    progress["done"] = True
    path.write_text(json.dumps(progress, indent=1))
    return progress


def ship(progress: dict, runs: Path, models: Path, out: Path, steps: int) -> None:
    """A finished run: its pictures at `steps` (equal steps) and at its last step copied out; a WGAN-GP generator
    exported into models/; its checkpoints removed."""
    from trainer import export

    name, loss = progress["recipe"], progress["loss"]
    run_dir = runs / name / loss
    if not (run_dir / "checkpoints").is_dir():
        return  # shipped already
    if loss == "wgan-gp":
        if export.main([str(run_dir), "--out", str(models / f"{name}-{loss}")]) != 0:
            raise RuntimeError(f"exporting {run_dir} failed")
        annotate(models / f"{name}-{loss}" / "README.md", progress)
    last = progress["chunks"][-1]["step"]
    keep = {last: f"converged-{name}-{loss}-equal-time.png"} if last > steps else {}
    keep[steps] = f"converged-{name}-{loss}.png"
    for picture in sorted((run_dir / "samples").glob("step-*.png")):
        step = int(picture.stem.split("-")[1])
        if step in keep:
            shutil.copyfile(picture, out / keep[step])
        else:
            picture.unlink()
    shutil.rmtree(run_dir / "checkpoints")


def every_record(runs: Path) -> list[dict]:
    """Every run folder's progress record under `runs` with a scored chunk, in the budget's order: dataset, recipe,
    loss."""
    found = [r for p in runs.glob("*/*/progress.json") if (r := json.loads(p.read_text()))["chunks"]]

    def rank(r: dict) -> tuple[int, int, int]:
        recipes, losses = list(RECIPES.get(r["dataset"], {})), list(LOSSES)
        where = lambda seq, x: seq.index(x) if x in seq else len(seq)  # noqa: E731
        return where(list(ORDER), r["dataset"]), where(recipes, r.get("recipe")), where(losses, r["loss"])

    return sorted(found, key=rank)


def closest(dataset: str, tried: list[dict]) -> dict:
    """The WGAN-GP run nearest its dataset's target by its last score (the later one of equals)."""
    miss = TARGETS[dataset].miss
    return min(reversed(tried), key=lambda r: miss(r["chunks"][-1]["metrics"], r["floor"]))


EQUAL_TIME = ("gan-r1", "r3gan")  # the modern objectives, also trained for WGAN-GP's seconds


def main(datasets: list[str], runs: Path, out: Path, models: Path, cache_dir: Optional[str]) -> int:
    """Dataset by dataset, WGAN-GP until its target (its recipes in turn), then each baseline to its steps; then
    EQUAL_TIME's runs extended to WGAN-GP's seconds. Exit 75 when stopped (the same command continues)."""
    out.mkdir(parents=True, exist_ok=True)
    records: dict[tuple[str, str], dict] = {}
    beside: dict[str, dict] = {}  # dataset: the WGAN-GP run its baselines train beside
    # A stop between chunks (scoring, exporting, a start-up) ends the budget the same way as one inside a chunk,
    # where train_chunk forwards it to train.py: the tables are still written and the exit is 75.
    old = {s: signal.signal(s, _stop_between_chunks) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for dataset in [d for d in ORDER if d in datasets]:
            tried = []
            for recipe in RECIPES[dataset]:
                records[recipe, "wgan-gp"] = wgan = run(dataset, recipe, "wgan-gp", runs, cache_dir, Goal())
                ship(wgan, runs, models, out, wgan["chunks"][-1]["step"])
                tried.append(wgan)
                if wgan["converged"]:
                    break
            beside[dataset] = wgan = tried[-1] if tried[-1]["converged"] else closest(dataset, tried)
            for loss in (loss for loss in LOSSES if loss != "wgan-gp"):
                progress = run(dataset, wgan["recipe"], loss, runs, cache_dir, Goal(wgan["chunks"][-1]["step"]))
                records[wgan["recipe"], loss] = progress
                if loss not in EQUAL_TIME:
                    ship(progress, runs, models, out, wgan["chunks"][-1]["step"])
            beside_runs = [r for (recipe, _), r in records.items() if recipe == wgan["recipe"]]
            panel(runs, beside_runs, wgan["chunks"][-1]["step"], out)
        for dataset, wgan in beside.items():
            goal = Goal(wgan["chunks"][-1]["step"], trained_seconds(wgan))
            for loss in EQUAL_TIME:
                records[wgan["recipe"], loss] = progress = run(dataset, wgan["recipe"], loss, runs, cache_dir, goal)
                ship(progress, runs, models, out, goal.steps)
    except Stopped:
        print("stopped: the run in progress wrote its checkpoint; run the same command again to continue", flush=True)
        return 75
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if records:
            every = every_record(runs)  # this command's runs and those earlier ones left (another --datasets)
            text = table(every)
            (out / "quality-converged.md").write_text(text + "\n")
            (out / "quality-converged.json").write_text(json.dumps(every, indent=1))
            print(text, flush=True)
    return 0
