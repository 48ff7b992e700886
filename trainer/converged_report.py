"""The converged budget's report (trainer/converged.py): the seconds a run trained, the tables at equal steps and at
equal wall-clock time, the Figure 1 row of pictures, and the model card's section."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def trained_seconds(progress: dict, upto: Optional[int] = None) -> float:
    """Seconds of training (train.py start-up included) up to generator step `upto` (None: all of it)."""
    chunks = [c for c in progress["chunks"] if upto is None or c["step"] <= upto]
    return sum(c["seconds"] for c in chunks) + (progress["interrupted_seconds"] if upto is None else 0.0)


def metrics_at(r: dict, step: int) -> dict:
    """A run's scores at generator step `step` (one of its chunks)."""
    return next(c for c in r["chunks"] if c["step"] == step)["metrics"]


def caption(r: dict, step: int) -> str:
    m = metrics_at(r, step)
    if "fd_classifier" in m:
        fd = m["fd_classifier"]
        return f"{r['loss']}: FD {fd:.1f} ({fd / r['floor']:.1f}x), {m['classes_covered']:.0f}/10 classes"
    modes = f"{m['modes_covered']:.0f} modes, {m['high_quality']:.0%} near one, " if "modes_covered" in m else ""
    return f"{r['loss']}: {modes}W1 {m['w1']:.3f}"


def panel(runs: Path, records: list[dict], steps: int, out: Path) -> None:
    """The paper's Figure 1 row: each loss's picture at WGAN-GP's steps side by side (toys: samples over the critic's
    contours, real points marked; digits: grids), each captioned with its figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = [(r, runs / r["recipe"] / r["loss"] / "samples" / f"step-{steps:08d}.png") for r in records]
    shown = [(r, path) for r, path in shown if path.is_file()]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
    for ax, (r, path) in zip(axes[0], shown, strict=True):
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(caption(r, steps), fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{shown[0][0]['recipe']}, {steps:,} generator steps, seed 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"converged-{shown[0][0]['recipe']}.png", dpi=80)
    plt.close(fig)


def annotate(card: Path, progress: dict) -> None:
    """The model card's section on the budget that trained it: target, steps, wall time, last figures, how to
    score it again (appended once)."""
    text = card.read_text()
    if "## Converged budget" in text:
        return
    last, seconds = progress["chunks"][-1], trained_seconds(progress)
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


def row(r: dict, step: int) -> str:
    """One table row: a run's figures at generator step `step` and its training minutes up to there."""
    m = metrics_at(r, step)
    minutes = trained_seconds(r, None if step == r["chunks"][-1]["step"] else step) / 60
    cell = lambda key, fmt: format(m[key], fmt) if key in m else "-"  # noqa: E731
    met = {True: "yes", False: "no", None: "(baseline)"}[r.get("converged")]
    fd = f"{m['fd_classifier']:.2f} ({m['fd_classifier'] / r['floor']:.2f}x)" if "fd_classifier" in m else "-"
    w1 = f"{m['w1']:.4f} ({m['w1'] / r['floor']:.2f}x)" if "w1" in m else "-"
    return (f"| {r['recipe']} | {r['loss']} | {r['target']} | {step:,} | {minutes:.1f} min | {met} | "
            f"{cell('modes_covered', '.0f')} | {cell('high_quality', '.3f')} | {w1} | {fd} | "
            f"{cell('classes_covered', '.0f')} |")  # fmt: skip


def table(records: list[dict]) -> str:
    """At equal generator steps (WGAN-GP's), then, for the runs extended past them, at equal wall-clock time."""
    head = ["| data | loss | target | steps | wall time | met | modes | high-quality | W1 | classifier FD | classes |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    steps = {r["recipe"]: r["chunks"][-1]["step"] for r in records if r["loss"] == "wgan-gp"}
    equal = [
        row(r, steps[r["recipe"]]) for r in records if any(c["step"] == steps.get(r["recipe"]) for c in r["chunks"])
    ]
    lines = ["At equal generator steps (WGAN-GP's converged steps):", "", *head, *equal]
    longer = [r for r in records if r["chunks"][-1]["step"] > steps.get(r["recipe"], float("inf"))]
    if longer:
        lines += ["", "At equal wall-clock time (as many steps as fit in WGAN-GP's seconds, beside WGAN-GP's row):", "",
                  *head]  # fmt: skip
        for recipe in dict.fromkeys(r["recipe"] for r in longer):
            lines += [row(r, r["chunks"][-1]["step"]) for r in records
                      if r["recipe"] == recipe and (r["loss"] == "wgan-gp" or r in longer)]  # fmt: skip
    return "\n".join(lines)
