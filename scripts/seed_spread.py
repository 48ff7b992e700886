"""How much of a digits figure is the seed? python scripts/seed_spread.py --config CFG GENERATOR [GENERATOR ...]

Scores exported mnist5k/digits generators (`trainer.export` folders, one per training seed) the way the converged
budget scores a run (trainer.metrics.evaluate: classifier FD on 1,000 samples against the recipe's held-out floor),
once for each noise seed, so two sources of spread stand apart: the training seed (one generator against another) and
the 1,000 samples drawn (one noise seed against another, same generator). Prints a markdown table; --json writes the
figures, which tests/test_shipped_generators.py scores again."""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from trainer.converged import DIGITS_NUM, floor
from trainer.core.gate import configure
from trainer.export import GANGenerator
from trainer.metrics.evaluate import evaluate


def training_seed(folder: Path) -> int:
    """The seed in the card's training config (trainer.export writes the resolved config into README.md)."""
    found = re.search(r"^seed: (\d+)$", (folder / "README.md").read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"{folder}/README.md names no training seed: is it a trainer.export folder?")
    return int(found.group(1))


def spread(config: str, folders: list[Path], noise_seeds: list[int]) -> dict:
    base = floor("mnist5k", config, None)
    rows = []
    for folder in folders:
        generator = GANGenerator.from_pretrained(str(folder))
        scores = [dict(evaluate(generator, configure(config, (f"seed={s}",)), None, DIGITS_NUM, "cpu"))
                  for s in noise_seeds]  # fmt: skip
        fds = [s["fd_classifier"] for s in scores]
        rows.append({"generator": str(folder), "training_seed": training_seed(folder), "noise_seeds": noise_seeds,
                     "fd_classifier": fds, "classes_covered": [s["classes_covered"] for s in scores],
                     "fd_mean": statistics.mean(fds), "ratio_mean": statistics.mean(fds) / base})  # fmt: skip
    return {"config": config, "num": DIGITS_NUM, "floor": base, "runs": rows}


def table(result: dict) -> str:
    seeds = result["runs"][0]["noise_seeds"]
    lines = [f"| training seed | {' | '.join(f'FD, noise seed {s}' for s in seeds)} | mean (x floor) | classes |",
             "|---" * (len(seeds) + 3) + "|"]  # fmt: skip
    for row in result["runs"]:
        fds = " | ".join(f"{fd:.2f} ({fd / result['floor']:.2f}x)" for fd in row["fd_classifier"])
        classes = "/".join(str(int(c)) for c in row["classes_covered"])
        lines.append(
            f"| {row['training_seed']} | {fds} | {row['fd_mean']:.2f} ({row['ratio_mean']:.2f}x) | {classes} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generators", type=Path, nargs="+", help="trainer.export folders, one per training seed")
    parser.add_argument("--config", required=True, help="the recipe they were trained with (its floor and image size)")
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = spread(args.config, args.generators, args.noise_seeds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"floor (held-out real digits): {result['floor']:.4f}\n{table(result)}")
