"""`python -m trainer.compare RUN_DIR... --metric KEY...`: several local runs' metrics on shared axes, no network."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

from trainer.errors import TrainerError, unwritable_out

Records = list[dict]


def read_run(run_dir: Path) -> Records:
    """The run's metric lines in file order; a line cut off by a kill is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        is_run = (Path(run_dir) / "config.yaml").is_file()
        why = "nothing logged yet" if is_run else "no config.yaml either: not a run folder"
        raise TrainerError(f"{path} does not exist ({why}). Pass run folders written by train.py (its run.dir).")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def numeric_keys(records: Records) -> set[str]:
    return {k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the lines that have `key`."""
    pairs = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def labels_for(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a name."""
    names = [Path(d).name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs, strict=True)]


def check_metrics(runs: dict[str, Records], metrics: list[str]) -> None:
    available = set().union(*(numeric_keys(r) for r in runs.values()))
    missing = [m for m in metrics if m not in available]
    if missing:
        raise TrainerError(
            f"no run has metric {', '.join(repr(m) for m in missing)}. Metrics these runs have: "
            f"{', '.join(sorted(available)) or 'none (empty metrics.jsonl)'}."
        )


def provenance_warnings(runs: dict[str, Records], metrics: list[str]) -> list[str]:
    """Why the runs' eval_ numbers are not comparable: per metric family, each provenance field (extractor, its
    weights' sha256, resize, sample counts, reference statistics' hash) on which the runs' last evaluations differ."""
    if not any(m.startswith("eval_") for m in metrics):
        return []
    last = {
        label: next((r["provenance"] for r in reversed(recs) if "provenance" in r), None)
        for label, recs in runs.items()
    }
    lines = [f"{label}: no evaluation provenance recorded (an older run): comparability unknown"
             for label, p in last.items() if p is None]  # fmt: skip
    known = {label: p for label, p in last.items() if p is not None}
    for family in sorted({f for p in known.values() for f in p}):
        fields = sorted({k for p in known.values() for k in p.get(family, {})})
        for field in fields:
            values = {label: p.get(family, {}).get(field) for label, p in known.items()}
            if len({json.dumps(v) for v in values.values()}) > 1:
                shown = ", ".join(f"{label}={_short(v)}" for label, v in values.items())
                lines.append(f"eval_ numbers not comparable: {family} {field} differs ({shown})")
    return lines


def _short(value: object) -> str:
    """A sha256 as its first 12 hex digits; anything else as text, cut at 60 characters."""
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text[:60]


def plot(runs: dict[str, Records], metrics: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for label, records in runs.items():
            steps, values = series(records, metric)
            if steps:
                ax.plot(steps, values, label=label, marker="." if len(steps) < 30 else None)
        ax.set(title=metric, xlabel="generator step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def final_table(runs: dict[str, Records], metrics: list[str]) -> str:
    """A plain-text table: run, last step, and each metric's final value ('-' where the run lacks it)."""
    header = ["run", "step", *metrics]
    rows = []
    for label, records in runs.items():
        last = [series(records, m) for m in metrics]
        cells = [f"{values[-1]:.6g}" if values else "-" for _, values in last]
        rows.append([label, str(records[-1]["step"]) if records else "-", *cells])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.compare",
        description=__doc__,
        epilog="Reads each run's metrics.jsonl, draws one subplot per metric (x = generator step, one line per run) "
        "into a PNG and prints each run's final value of each metric (from the last line that has the key).",
    )
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders (hold metrics.jsonl)")
    parser.add_argument("--metric", nargs="+", default=["wasserstein"], metavar="KEY", help="metric keys to draw")
    parser.add_argument("--out", type=Path, default=Path("runs/compare.png"), help="PNG to write")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix.lower() != ".png":
            raise TrainerError(f"--out {args.out}: the file must end in .png.")
        runs = dict(zip(labels_for(args.run_dirs), (read_run(d) for d in args.run_dirs), strict=True))
        check_metrics(runs, args.metric)
        for warning in provenance_warnings(runs, args.metric):
            print(f"warning: {warning}", file=sys.stderr)
        try:
            plot(runs, args.metric, args.out)
        except OSError as err:
            raise unwritable_out(args.out, err) from None
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(final_table(runs, args.metric))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
