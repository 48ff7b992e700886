"""`python -m trainer.reproduce`: the README's quality tables, regenerated from runs in this repository.

WGAN-GP against weight clipping (wgan-clip) and the standard non-saturating GAN at equal generator steps, several
seeds each, on the paper's three 2-D toys (modes covered, high-quality share, exact W1) and on real MNIST offline
(mnist5k: classifier FD with the real-vs-real baseline, classes covered, precision/recall). Each run is the real
train.py in a subprocess; its final exported generator is scored with trainer.metrics.evaluate. Writes
OUT/quality.md (the tables and the budget), OUT/quality.json (every run's numbers and provenance) and
OUT/quality-<dataset>.png (seed 0's samples, the three losses side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from trainer.recipes import CONFIGS, LOSSES, TOYS  # the budgets' shared recipes

ROOT = Path(__file__).resolve().parent.parent
DIGITS_NUM = 1000  # generated digits per evaluation: as many as the held-out real digits of the baseline


@dataclass(frozen=True)
class Budget:
    toy_steps: int
    digit_steps: int
    seeds: tuple[int, ...]
    toy_width: int  # hidden width of the toy MLPs (the paper: 512)
    toy_num: int  # generated toy points per evaluation


BUDGETS = {
    "tiny": Budget(toy_steps=3, digit_steps=3, seeds=(0,), toy_width=16, toy_num=300),  # CI: the plumbing
    "cpu": Budget(toy_steps=1000, digit_steps=1500, seeds=(0, 1, 2), toy_width=128, toy_num=2000),
    "paper": Budget(toy_steps=10000, digit_steps=10000, seeds=(0, 1, 2), toy_width=512, toy_num=2000),
}


def overrides(dataset: str, loss: str, seed: int, budget: Budget, run_dir: Path, threads: int) -> list[str]:
    toy = dataset in TOYS
    steps = budget.toy_steps if toy else budget.digit_steps
    keys = [*LOSSES[loss], f"seed={seed}", f"train.steps={steps}", f"run.dir={run_dir}"]
    keys += [f"train.cpu_threads={threads}", "log.sample_every=0", "checkpoint.every=0", "checkpoint.keep=1"]
    keys += [f"log.every={max(1, min(100, steps))}", "eval.every=0", "eval.at_end=false", "log.tracker=none"]
    return keys + ([f"model.width={budget.toy_width}"] if toy else [])


def train(dataset: str, loss: str, seed: int, budget: Budget, runs: Path, threads: int) -> tuple[Path, float]:
    """Trains one run (or reuses a finished one in the same folder with the same config); returns (folder, seconds)."""
    run_dir = runs / dataset / loss / f"seed{seed}"
    keys = overrides(dataset, loss, seed, budget, run_dir, threads)
    done = run_dir / "reproduce.json"
    if done.is_file() and json.loads(done.read_text()).get("overrides") == keys:
        return run_dir, float(json.loads(done.read_text())["seconds"])
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    start = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / CONFIGS[dataset]), *keys]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    done.write_text(json.dumps({"overrides": keys, "seconds": seconds}))
    return run_dir, seconds


def score(run_dir: Path, budget: Budget, cache_dir: Optional[str]) -> tuple[dict, dict, torch.Tensor]:
    """(metrics, provenance, 64 samples for the picture) of a run's final exported generator."""
    from trainer.metrics.evaluate import evaluate
    from trainer.run import checkpoint
    from trainer.sample import load_generator

    generator, cfg = load_generator(checkpoint.resolve(run_dir, "latest"), torch.device("cpu"))
    cfg.eval.cache_dir = cache_dir or cfg.eval.cache_dir
    toy = cfg.data.name in TOYS
    scores = evaluate(generator, cfg, None, budget.toy_num if toy else DIGITS_NUM, "cpu")
    with torch.no_grad():
        z = torch.randn(1000 if toy else 64, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        samples = generator(z).float()
    return dict(scores), scores.provenance, samples


def baseline(cache_dir: Optional[str]) -> dict:
    from trainer.core.gate import configure
    from trainer.metrics.evaluate import real_baseline

    cfg = configure(str(ROOT / CONFIGS["mnist5k"]), (f"eval.cache_dir={cache_dir}",) if cache_dir else ())
    scores = real_baseline(cfg)
    return {"metrics": dict(scores), "provenance": scores.provenance}


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(results: list[dict], base: Optional[dict], budget: Budget, name: str, seconds: float) -> str:
    """The markdown tables: mean ± standard deviation over the seeds (each seed's value in quality.json)."""
    by, seconds_of = {}, {}  # per (dataset, loss): each seed's metrics, each seed's training seconds
    for r in results:
        by.setdefault((r["dataset"], r["loss"]), []).append(r["metrics"])
        seconds_of.setdefault((r["dataset"], r["loss"]), []).append(r["train_seconds"])
    seeds = ", ".join(map(str, budget.seeds))
    lines = [
        f"Budget `{name}`: toys {budget.toy_steps} generator steps (toy MLPs 3x{budget.toy_width}, batch 256), "
        f"mnist5k {budget.digit_steps} generator steps (seed-000 MLP pair, 28x28, batch 64); seeds {seeds}; "
        f"{seconds / 60:.1f} min of training and scoring on this machine's CPU.",
        "",
    ]
    toys = [d for d in TOYS if any(k[0] == d for k in by)]
    if toys:
        lines += ["| data | loss | modes covered | high-quality share | W1 | train s |", "|---|---|---|---|---|---|"]
        for dataset in toys:
            for loss in LOSSES:
                ms = by.get((dataset, loss), [])
                modes = mean_std([m["modes_covered"] for m in ms], 1) if "modes_covered" in ms[0] else "-"
                quality = mean_std([m["high_quality"] for m in ms], 3) if "high_quality" in ms[0] else "-"
                secs = mean_std(seconds_of.get((dataset, loss), [0.0]), 0)
                lines.append(
                    f"| {dataset} | {loss} | {modes} | {quality} | {mean_std([m['w1'] for m in ms], 3)} | {secs} |"
                )
        lines.append("")
    if ("mnist5k", "wgan-gp") in by:
        head = "| mnist5k | classifier FD | classes covered | precision | recall | density | coverage |"
        lines += [head, "|---|---|---|---|---|---|---|"]
        keys = [("fd_classifier", 2), ("classes_covered", 1), ("precision", 3), ("recall", 3), ("density", 3),
                ("coverage", 3)]  # fmt: skip
        for loss in LOSSES:
            ms = by[("mnist5k", loss)]
            lines.append(f"| {loss} | " + " | ".join(mean_std([m[k] for m in ms], d) for k, d in keys) + " |")
        if base is not None:
            row = " | ".join(mean_std([base["metrics"][k]], d) for k, d in keys)
            lines.append(f"| real held-out digits (baseline) | {row} |")
        lines.append("")
    return "\n".join(lines)


def picture(dataset: str, samples: dict[str, torch.Tensor], out: Path) -> None:
    """Seed 0's samples of each loss side by side: toys as points over real points, digits as an 8x8 grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, len(samples), figsize=(2.6 * len(samples), 2.8), squeeze=False)
    for ax, (loss, x) in zip(axes[0], samples.items(), strict=True):
        if dataset in TOYS:
            from trainer.data.toys import TOYS as SAMPLERS

            real = SAMPLERS[dataset](1000, generator=torch.Generator().manual_seed(1))
            ax.scatter(real[:, 0], real[:, 1], s=1, c="tab:orange", alpha=0.4)
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:green", alpha=0.5)
            ax.set_xlim(real[:, 0].min() - 1, real[:, 0].max() + 1)
            ax.set_ylim(real[:, 1].min() - 1, real[:, 1].max() + 1)
        else:
            grid = make_grid((x[:64] + 1) / 2, nrow=8, padding=1, pad_value=0.5)
            ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(loss, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)


def equal_time(dataset: str, results: list[dict], budget: Budget, args: argparse.Namespace) -> list[dict]:
    """Each loss but WGAN-GP again, for the generator steps that fit in WGAN-GP's mean training seconds at its own
    measured seconds per step (whole train.py runs, start-up included): the comparison at equal wall-clock time."""
    toy, out = dataset in TOYS, []
    steps = budget.toy_steps if toy else budget.digit_steps
    mean = {loss: statistics.mean(r["train_seconds"] for r in results if (r["dataset"], r["loss"]) == (dataset, loss))
            for loss in LOSSES}  # fmt: skip
    for loss in (loss for loss in LOSSES if loss != "wgan-gp"):
        matched = max(1, round(steps * mean["wgan-gp"] / mean[loss]))
        longer = replace(budget, **({"toy_steps": matched} if toy else {"digit_steps": matched}))
        for seed in budget.seeds:
            run_dir, seconds = train(dataset, loss, seed, longer, args.runs.resolve() / "equal-time", args.threads)
            metrics, provenance, _ = score(run_dir, longer, args.cache_dir)
            out.append(dict(dataset=dataset, loss=loss, seed=seed, run=os.path.relpath(run_dir), train_seconds=seconds,
                            metrics=metrics, provenance=provenance, equal_time_steps=matched))  # fmt: skip
            print(json.dumps({k: out[-1][k] for k in ("dataset", "loss", "seed", "equal_time_steps", "metrics")}))
    return out


def equal_time_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if "equal_time_steps" in r]
    if not rows:
        return []
    lines = ["At equal wall-clock time (each loss for the steps that fit in WGAN-GP's seconds):", "",
             "| data | loss | generator steps | train s | W1 | modes | classifier FD | classes |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset, loss in dict.fromkeys((r["dataset"], r["loss"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["loss"]) == (dataset, loss)]
        m = {key: mean_std([r["metrics"][key] for r in group], d) if key in group[0]["metrics"] else "-"
             for key, d in (("w1", 3), ("modes_covered", 1), ("fd_classifier", 2), ("classes_covered", 1))}  # fmt: skip
        secs = mean_std([r["train_seconds"] for r in group], 0)
        lines.append(f"| {dataset} | {loss} | {group[0]['equal_time_steps']:,} | {secs} | {m['w1']} | "
                     f"{m['modes_covered']} | {m['fd_classifier']} | {m['classes_covered']} |")  # fmt: skip
    return [*lines, ""]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget",
        choices=[*sorted(BUDGETS), "converged"],
        default="cpu",
        help="steps, seeds and toy width; converged: WGAN-GP until its target (trainer/converged.py)",
    )
    parser.add_argument("--datasets", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--runs", type=Path, help="where the runs go (runs/reproduce; converged: results/converged)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="converged: the exported generators")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="quality.md, quality.json, PNGs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (runs go one at a time)")
    parser.add_argument("--cache-dir", help="classifier cache (default: eval.cache_dir, $WGAN_GP_CACHE)")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of the budget's seeds (e.g. --seeds 0)")
    parser.add_argument("--equal-time", action="store_true",
                        help="then train every other loss for as many steps as fit in WGAN-GP's seconds")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget == "converged":  # resumable across sessions, so its run folders live in the repository
        from trainer import converged

        runs = (args.runs or Path("results/converged")).resolve()
        return converged.main(args.datasets, runs, args.out, args.models.resolve(), args.cache_dir)
    args.runs = args.runs or Path("runs/reproduce")
    budget, start = BUDGETS[args.budget], time.perf_counter()
    if args.seeds:
        budget = replace(budget, seeds=tuple(args.seeds))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset in args.datasets:
        pictures = {}
        for loss in LOSSES:
            for seed in budget.seeds:
                run_dir, seconds = train(dataset, loss, seed, budget, args.runs.resolve(), args.threads)
                metrics, provenance, samples = score(run_dir, budget, args.cache_dir)
                run = os.path.relpath(run_dir)
                results.append(dict(dataset=dataset, loss=loss, seed=seed, run=run, train_seconds=seconds,
                                    metrics=metrics, provenance=provenance))  # fmt: skip
                print(json.dumps({k: results[-1][k] for k in ("dataset", "loss", "seed", "metrics")}), flush=True)
                if seed == budget.seeds[0]:
                    pictures[loss] = samples
        picture(dataset, pictures, args.out / f"quality-{dataset}.png")
        if args.equal_time:
            results += equal_time(dataset, results, budget, args)
    base = baseline(args.cache_dir) if "mnist5k" in args.datasets else None
    seconds = time.perf_counter() - start
    text = tables([r for r in results if "equal_time_steps" not in r], base, budget, args.budget, seconds)
    text += "\n".join(equal_time_table(results))
    record = {"budget": {"name": args.budget, **asdict(budget)}, "seconds": seconds, "baseline": base, "runs": results}
    (args.out / "quality.json").write_text(json.dumps(record, indent=1))
    (args.out / "quality.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
