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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

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


TARGETS = {
    "8gaussians": Target("8/8 modes, high-quality share >= 0.9",
                         lambda m, f: m["modes_covered"] == 8 and m["high_quality"] >= 0.9, 2000, 40000),
    "mnist5k": Target("classifier FD <= 2x real-vs-real, 10/10 classes",
                      lambda m, f: m["fd_classifier"] <= 2 * f and m["classes_covered"] == 10, 2000, 40000),
    "25gaussians": Target(">= 24/25 modes", lambda m, f: m["modes_covered"] >= 24, 2000, 40000),
    "swissroll": Target("W1 <= 1.5x real-vs-real", lambda m, f: m["w1"] <= 1.5 * f, 2000, 40000),
}  # fmt: skip
ORDER = ("8gaussians", "mnist5k", "25gaussians", "swissroll")  # the issue's headline results first


def floor(dataset: str, cache_dir: Optional[str]) -> float:
    """Real against real: toys the exact W1 between independent real sets of TOY_NUM points and the scorer's own
    reference set (seed 1); mnist5k the held-out digits' classifier FD (trainer.metrics.evaluate.real_baseline)."""
    if dataset == "mnist5k":
        from trainer.core.gate import configure
        from trainer.metrics.evaluate import real_baseline

        keys = (f"eval.cache_dir={cache_dir}",) if cache_dir else ()
        return float(real_baseline(configure(str(ROOT / CONFIGS[dataset]), keys))["fd_classifier"])
    from trainer.metrics.toy import real_w1

    return real_w1(dataset, TOY_NUM, reference_seed=1, draws=FLOOR_DRAWS)


def base_overrides(dataset: str, loss: str, run_dir: Path, chunk: int) -> list[str]:
    keys = [*LOSSES[loss], "seed=0", f"run.dir={run_dir}", "train.cpu_threads=1", "log.tracker=none"]
    return keys + [f"checkpoint.every={chunk}", "checkpoint.keep=1", f"log.sample_every={chunk}", "eval.every=0"]


class Stopped(Exception):
    """The budget was asked to stop (SIGTERM/SIGINT); the run in progress wrote its checkpoint."""


def train_chunk(keys: list[str], dataset: str, steps: int) -> float:
    """train.py to `steps` generator steps, resuming the run folder's newest checkpoint; returns its seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / CONFIGS[dataset]), *keys,
           "run.resume=latest", f"train.steps={steps}"]  # fmt: skip
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


def run(dataset: str, loss: str, runs: Path, cache_dir: Optional[str], base: float, until: Optional[int]) -> dict:
    """One run of the budget, continued from its progress.json: WGAN-GP until the target (until=None), a baseline
    until `until` steps. Returns the progress record (chunks: step, seconds, metrics; steps; converged)."""
    target, run_dir = TARGETS[dataset], runs / dataset / loss
    keys = base_overrides(dataset, loss, run_dir, target.chunk)
    path = run_dir / "progress.json"
    progress = json.loads(path.read_text()) if path.is_file() else None
    if progress is None or _portable(progress["overrides"]) != _portable(keys):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        progress = {"dataset": dataset, "loss": loss, "overrides": keys, "target": target.text, "floor": base,
                    "chunks": [], "interrupted_seconds": 0.0, "done": False}  # fmt: skip
    while not progress["done"]:
        step = (progress["chunks"][-1]["step"] if progress["chunks"] else 0) + target.chunk
        try:
            seconds = train_chunk(keys, dataset, step)
        except Stopped as stop:
            progress["interrupted_seconds"] += stop.args[0]
            path.write_text(json.dumps(progress, indent=1))
            raise
        metrics = score(run_dir, dataset, cache_dir)
        progress["chunks"].append({"step": step, "seconds": seconds, "metrics": metrics})
        met = target.met(metrics, base)
        progress["converged"] = met if until is None else None
        progress["done"] = (met or step >= target.max_steps) if until is None else step >= until
        print(json.dumps({"dataset": dataset, "loss": loss, "step": step, "seconds": round(seconds, 1),
                          "target_met": met, **metrics}), flush=True)  # fmt: skip
        path.write_text(json.dumps(progress, indent=1))
    return progress


def ship(progress: dict, runs: Path, models: Path, out: Path) -> None:
    """A finished run: its generator exported into models/, its last toy picture copied out, its checkpoints gone."""
    from trainer import export

    dataset, loss = progress["dataset"], progress["loss"]
    run_dir = runs / dataset / loss
    if not (run_dir / "checkpoints").is_dir():
        return  # shipped already
    if export.main([str(run_dir), "--out", str(models / f"{dataset}-{loss}")]) != 0:
        raise RuntimeError(f"exporting {run_dir} failed")
    annotate(models / f"{dataset}-{loss}" / "README.md", progress)
    pictures = sorted((run_dir / "samples").glob("step-*.png"))
    for old in pictures[:-1]:
        old.unlink()
    if pictures:
        shutil.copyfile(pictures[-1], out / f"converged-{dataset}-{loss}.png")
    shutil.rmtree(run_dir / "checkpoints")


def annotate(card: Path, progress: dict) -> None:
    """The model card's section on the budget that trained it: target, steps, wall time, last figures, how to
    score it again (appended once)."""
    text = card.read_text()
    if "## Converged budget" in text:
        return
    last, seconds = (
        progress["chunks"][-1],
        sum(c["seconds"] for c in progress["chunks"]) + progress["interrupted_seconds"],
    )
    met = {True: "met", False: "not met (step cap)", None: "a baseline at WGAN-GP's steps"}[progress.get("converged")]
    figures = "\n".join(f"| `{k}` | {v:.6g} |" for k, v in last["metrics"].items())
    text += (
        f"\n## Converged budget\n\n`python -m trainer.reproduce --budget converged` (trainer/converged.py): "
        f"{progress['loss']} on {progress['dataset']}, seed 0, target *{progress['target']}*: {met} at generator step "
        f"{last['step']:,} after {seconds / 60:.1f} min of training on one CPU thread (scored every "
        f"{last['step'] // len(progress['chunks']):,} steps). Real-vs-real floor of the target's figure: "
        f"{progress['floor']:.6g}.\n\n| metric (trainer.metrics.evaluate, seed 0) | value |\n|---|---|\n{figures}\n\n"
        f"Score it again: `GANGenerator.from_pretrained(FOLDER).sample(N, seed=0)` draws the same noise as the "
        f"scorer (`torch.randn(N, z_dim)` from `torch.Generator().manual_seed(0)`).\n"
    )
    card.write_text(text)


def table(records: list[dict]) -> str:
    lines = ["| data | loss | target | steps | wall time | met | modes | high-quality | W1 | classifier FD | classes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        last = r["chunks"][-1]
        m, minutes = last["metrics"], (sum(c["seconds"] for c in r["chunks"]) + r["interrupted_seconds"]) / 60
        cell = lambda key, fmt, m=m: format(m[key], fmt) if key in m else "-"  # noqa: E731
        met = {True: "yes", False: "no", None: "(baseline)"}[r.get("converged")]
        fd = f"{m['fd_classifier']:.2f} ({m['fd_classifier'] / r['floor']:.2f}x)" if "fd_classifier" in m else "-"
        w1 = f"{m['w1']:.4f} ({m['w1'] / r['floor']:.2f}x)" if "w1" in m else "-"
        lines.append(f"| {r['dataset']} | {r['loss']} | {r['target']} | {last['step']:,} | {minutes:.1f} min | {met} | "
                     f"{cell('modes_covered', '.0f')} | {cell('high_quality', '.3f')} | {w1} | {fd} | "
                     f"{cell('classes_covered', '.0f')} |")  # fmt: skip
    return "\n".join(lines)


def main(datasets: list[str], runs: Path, out: Path, models: Path, cache_dir: Optional[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    order = [d for d in ORDER if d in datasets]
    try:
        for loss in LOSSES:  # WGAN-GP everywhere first, then the baselines at its step counts
            for dataset in order:
                base = floor(dataset, cache_dir)
                steps = [r["chunks"][-1]["step"] for r in records if r["dataset"] == dataset and r["loss"] == "wgan-gp"]
                until = None if loss == "wgan-gp" else steps[0]
                records.append(run(dataset, loss, runs, cache_dir, base, until))
                ship(records[-1], runs, models, out)
    except Stopped:
        print("stopped: the run in progress wrote its checkpoint; run the same command again to continue", flush=True)
        return 75
    finally:
        if records:
            text = table(records)
            (out / "quality-converged.md").write_text(text + "\n")
            (out / "quality-converged.json").write_text(json.dumps(records, indent=1))
            print(text, flush=True)
    return 0
