"""`python tests/gpu_summary.py OUT`: tests/gpu_checks.sh's results in one file, OUT/gpu_checks.json, and a table.

Reads what the script left in OUT: parts/*.json (environment, train.py runs, the CUDA tests, the TF32 figure, skipped
stages, failed benches) and bench-*.json (`python -m trainer.bench` results). Prints the README's GPU table rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def bench_row(result: dict) -> dict:
    """The figures of one bench result that the README's table and the issue's targets read."""
    trainer, other = (result[name] for name in result["contenders"])
    return {
        "trainer_ms_per_step": trainer["ms_per_step"],
        "baseline": result["contenders"][1],
        "baseline_ms_per_step": other["ms_per_step"],
        "speedup": result["speedup"],
        "fraction_of_peak": trainer["fraction_of_peak"],
        "achieved_tflops": trainer["achieved_tflops"],
        "penalty_share": trainer["penalty_share"],
        "peak_mem_mb": [trainer["peak_mem_mb"], other["peak_mem_mb"]],
        "warmup_s": [trainer["warmup_s"], other["warmup_s"]],  # the untimed first steps (compilation among them)
        "precision": result["precision"],
        "device": result["device"],
        "speed": result["config"]["speed"],
    }


def read(path: Path) -> dict:
    """A part's JSON; a stage that died before writing it leaves it empty: said so, not a crash of the summary."""
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"error": f"{path.name} is empty or not JSON: the stage failed (see gpu_checks.log)"}


def gather(out: Path) -> dict:
    parts = {path.stem: read(path) for path in sorted((out / "parts").glob("*.json"))}
    benches = {path.stem.removeprefix("bench-"): bench_row(read(path)) for path in out.glob("bench-*.json")}
    return {
        "environment": parts.pop("environment", None),
        "train_runs": {k.removeprefix("train-"): v for k, v in parts.items() if k.startswith("train-")},
        "tests": {k.removeprefix("pytest-"): v for k, v in parts.items() if k.startswith("pytest-")},
        "penalty_tf32_vs_ieee": parts.get("penalty-tf32"),
        "benches": dict(sorted(benches.items())),
        "failed_benches": {
            k.removeprefix("bench-").removesuffix("-failed"): v for k, v in parts.items() if k.endswith("-failed")
        },
        "skipped": {k.removeprefix("skip-"): v["skipped"] for k, v in parts.items() if k.startswith("skip-")},
    }


def table(results: dict) -> list[str]:
    rows = ["| bench | trainer ms/step | baseline ms/step | speedup | fraction of peak |", "|---|---|---|---|---|"]
    for name, b in results["benches"].items():
        peak = "-" if b["fraction_of_peak"] is None else f"{b['fraction_of_peak']:.1%}"
        ms = f"{b['trainer_ms_per_step']:.1f} | {b['baseline_ms_per_step']:.1f}"
        rows.append(f"| {name} | {ms} | {b['speedup']:.2f}x | {peak} |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tests/gpu_summary.py OUT (the folder tests/gpu_checks.sh wrote)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    results = gather(out)
    (out / "gpu_checks.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results)))
    for name, run in results["train_runs"].items():
        print(f"train.py {name}: exit {run['exit']}, {run['logged_steps']} metrics lines")
    for name, tests in results["tests"].items():
        print(f"tests ({name}): {tests.get('summary') or tests} (exit {tests.get('exit')})")
    if results["penalty_tf32_vs_ieee"]:
        print(f"penalty gradients TF32 convs vs IEEE: {results['penalty_tf32_vs_ieee']}")
    for name, why in {**results["skipped"], **results["failed_benches"]}.items():
        print(f"not measured: {name}: {why}")
    print(f"wrote {out / 'gpu_checks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
