"""The end of a run: its curves (curves.png), its last grid beside real images, an offline quality figure beside its
real-vs-real baseline, and a summary that says where everything is (printed, and in summary.json under "run")."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

CURVES = "curves.png"
BESIDE_REAL = "final-vs-real.png"
TOY_NUM = 2000  # generated and real points of the toys' W1 (trainer.metrics.toy.W1_POINTS)
PANELS = (  # (title, metrics.jsonl keys): the critic's estimate first, as the paper's Figure 3
    ("Wasserstein estimate E[D(real)] - E[D(fake)]", ("wasserstein",)),
    ("gradient penalty (before lambda)", ("penalty",)),
    ("losses", ("loss_d", "loss_g")),
    ("evaluation / critic's held-out gap", ("eval_fd_classifier", "eval_w1", "eval_fid", "critic_gap_held_out")),
)


def plot_curves(records: list[dict], path: Path, title: str) -> Optional[Path]:
    """curves.png: one panel per PANELS entry that the run logged, against the generator step; None if no line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, [k for k in keys if any(k in r for r in records)]) for name, keys in PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    if not records or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*points, strict=True), label=key, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("generator step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def beside_real(fake: torch.Tensor, real: Optional[torch.Tensor], path: Path) -> Optional[Path]:
    """The last grid's images (left) beside as many real ones (right), each image at 64 px or more; None for toys."""
    from trainer.run.pictures import upscaled

    if fake.dim() != 4 or real is None:
        return None
    from torchvision.utils import make_grid, save_image

    n = min(fake.shape[0], real.shape[0], 64)
    rows = max(1, int(math.sqrt(n)))
    grids = [make_grid(upscaled(x[:n].float().cpu()), nrow=rows, normalize=True, value_range=(-1, 1), pad_value=1.0)
             for x in (fake, real)]  # fmt: skip
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 16)
    save_image(torch.cat([grids[0], gap, grids[1]], dim=2), str(path))
    return path


def real_images(dataset: str, root: str, image_size: int, num: int) -> Optional[torch.Tensor]:
    """`num` training images of an in-memory dataset in [-1, 1] (a fixed draw); None for streamed sets and toys."""
    from trainer.data.batches import to_unit_range
    from trainer.data.files import resize_uint8
    from trainer.data.registry import DATASETS

    spec = DATASETS[dataset]
    if spec.is_toy or spec.load is None:
        return None
    images = spec.load(root, False)[0]
    rows = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:num]
    return to_unit_range(resize_uint8(images[rows], image_size))


def quality(generator: nn.Module, cfg, device: torch.device) -> Optional[dict]:
    """Collective (every process): an offline figure and its real-vs-real baseline, at the same sample count.

    Toys: the exact W1 of TOY_NUM generated points to the scorer's real set, and of independent real sets to it.
    Labelled small image sets with a held-out split (digits, mnist5k): the classifier FD of as many generated images
    as the split holds, and of the held-out real images, against the training images. Others: None (the Inception
    metrics need weights; `python -m trainer.evaluate --inception` computes them)."""
    from trainer.data.registry import DATASETS
    from trainer.metrics.evaluate import evaluate, real_baseline

    spec = DATASETS[cfg.data.name]
    if spec.metrics == "toy":
        from trainer.metrics.toy import real_w1

        scores = evaluate(generator, cfg, None, TOY_NUM, device)
        out = {"metric": "w1", "value": scores["w1"], "baseline": real_w1(cfg.data.name, TOY_NUM, cfg.seed + 1)}
        return {**out, "num": TOY_NUM, **{k: scores[k] for k in ("modes_covered", "high_quality") if k in scores}}
    if spec.metrics != "classifier" or spec.held_out is None:
        return None
    base = real_baseline(cfg, device)
    num = int(base.provenance["num_fake"])
    scores = evaluate(generator, cfg, None, num, device)
    return {"metric": "fd_classifier", "value": scores["fd_classifier"], "baseline": base["fd_classifier"],
            "num": num, "classes_covered": scores["classes_covered"]}  # fmt: skip


def summary(run_dir: Path, records: list[dict], seconds: float, steps: int, files: dict, score: Optional[dict]) -> dict:
    """The end-of-run figures (summary.json's "run")."""
    last = records[-1] if records else {}
    out = {"wall_s": round(seconds, 1), "steps_trained": steps, "it_per_s": steps / max(seconds, 1e-9)}
    out.update({k: last[k] for k in ("step", "wasserstein", "loss_d", "loss_g") if k in last})
    out["files"] = {k: str(v) for k, v in files.items() if v is not None}
    if score is not None:
        out["quality"] = {**score, "ratio_to_baseline": score["value"] / max(score["baseline"], 1e-12)}
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return out


def lines(run_dir: Path, s: dict, dataset: str) -> list[str]:
    """What a person reads at the end: how it went, then the files to open next."""
    minutes, rest = divmod(s["wall_s"], 60)
    out = [f"[wgan-gp] done: {s['steps_trained']:,} steps in {int(minutes)}m{rest:04.1f}s ({s['it_per_s']:.2f} it/s)"
           + (f"; final Wasserstein estimate {s['wasserstein']:.4f}" if "wasserstein" in s else "")]  # fmt: skip
    q = s.get("quality")
    if q:
        name = {"w1": "W1 to real points", "fd_classifier": "classifier FD"}[q["metric"]]
        extra = f", {q['classes_covered']:.0f}/10 classes" if "classes_covered" in q else ""
        extra += f", {q['modes_covered']:.0f} modes covered" if "modes_covered" in q else ""
        out.append(
            f"[wgan-gp] quality: {name} {q['value']:.4g} on {q['num']:,} samples; real {dataset} against real: "
            f"{q['baseline']:.4g} ({q['ratio_to_baseline']:.1f}x the real-vs-real baseline){extra}"
        )
    f = s["files"]
    out.append(f"[wgan-gp] run folder {run_dir}:")
    if "last_grid" in f:
        out.append(f"  {f['last_grid']}   the last samples" + (f" (beside real ones: {f['beside_real']})"
                                                              if "beside_real" in f else ""))  # fmt: skip
    if "curves" in f:
        out.append(f"  {f['curves']}   Wasserstein estimate, penalty and losses over the run")
    if "checkpoint" in f:
        out.append(f"  {f['checkpoint']}   to train on: add run.resume=latest and a larger train.steps")
    out.append(f"  sample from it:   python -m trainer.sample {run_dir} --num 64 --out grid.png")
    return out


def write_run_summary(run_dir: Path, s: dict) -> None:
    """summary.json's "run" entry beside the evaluation metrics' entries (trainer.run.tracking.write_summary)."""
    path = run_dir / "summary.json"
    summary_json = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**summary_json, "run": s}, indent=1))
