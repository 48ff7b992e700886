"""`python -m trainer.bench --contention N`: the default run beside N busy processes, with idle OpenMP threads
spinning (OMP_WAIT_POLICY=ACTIVE, OpenMP's usual default) and sleeping (PASSIVE, what train.py sets).

Each contender is the real train.py in a fresh process (the wait policy is read once, when torch's OpenMP runtime
starts), run on the quiet machine and again beside N processes that spin a core each, which this command starts
and stops itself. It prints each run's seconds, the loaded/quiet ratio per policy and the quiet-machine cost of
passive waiting, and checks that the metrics of all runs are identical (the policy only changes how threads wait).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
POLICIES = ("ACTIVE", "PASSIVE")
TIMINGS = ("time", "imgs_per_s", "peak_mem_mb", "time_critic_ms", "time_penalty_ms", "time_generator_ms")


def spinners(n: int) -> list[subprocess.Popen]:
    """n processes that keep a core busy each (plain Python loops, as other work on a shared machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def timed_run(policy: str, steps: int, overrides: list[str], folder: Path) -> tuple[float, list[dict]]:
    """Seconds of one train.py run (start-up included) and its metrics without the timing fields."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    keys = [f"run.dir={folder}", f"train.steps={steps}", "log.every=10", "log.sample_every=0", "checkpoint.every=0"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *keys, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return seconds, [{k: v for k, v in r.items() if k not in TIMINGS} for r in lines]


def main(load: int, steps: int, overrides: list[str]) -> dict:
    runs: dict[tuple[str, str], float] = {}
    metrics = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in ("quiet", f"beside {load} busy"):
            busy = spinners(load) if setting != "quiet" else []
            try:
                time.sleep(1.0 if busy else 0.0)  # the spinners are running before the contender starts
                for policy in POLICIES:
                    folder = Path(tmp) / f"{policy}-{len(busy)}"
                    runs[(policy, setting)], m = timed_run(policy, steps, overrides, folder)
                    metrics.append(m)
            finally:
                for proc in busy:
                    proc.kill()
                    proc.wait()
    quiet, loaded = "quiet", f"beside {load} busy"
    result = {
        "steps": steps,
        "load": load,
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "seconds": {f"{p} {s}": round(v, 2) for (p, s), v in runs.items()},
        "ratio": {p: runs[(p, loaded)] / runs[(p, quiet)] for p in POLICIES},
        "passive_quiet_cost": runs[("PASSIVE", quiet)] / runs[("ACTIVE", quiet)],
        "metrics_identical": all(m == metrics[0] for m in metrics),
    }
    print(f"default run, {steps} steps, {os.cpu_count()} cores; seconds per run (start-up included):")
    for policy in POLICIES:
        q, b = runs[(policy, quiet)], runs[(policy, loaded)]
        print(f"  OMP_WAIT_POLICY={policy:8} quiet {q:7.1f} s   {loaded} {b:7.1f} s   ratio {b / q:.2f}x")
    print(f"passive waiting on the quiet machine: {result['passive_quiet_cost']:.2f}x the active run's time")
    print(f"metrics identical across all {len(metrics)} runs: {result['metrics_identical']}")
    return result
