"""Experiment trackers (W&B, TensorBoard) through Accelerate, on the main process, never fatal to the run."""

from __future__ import annotations

import json
import netrc
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

from accelerate import Accelerator

from trainer.config import Config, to_dict

WANDB_ID_FILE = "wandb_id.txt"  # the W&B run id, so a resumed run continues the same W&B run


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_mode() -> str:
    """offline when there is no login to go online with (one warning line); otherwise what WANDB_MODE says."""
    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled", "dryrun"):
        return mode
    if not _wandb_logged_in():
        print(
            "[wgan-gp] warning: no W&B login (WANDB_API_KEY or `wandb login`); logging to W&B offline in the run "
            "folder instead - upload later with `wandb sync RUN_DIR/wandb/offline-run-*`.",
            flush=True,
        )
        return "offline"
    return mode


def _wandb_run_id(run_dir: Path) -> str:
    path = run_dir / WANDB_ID_FILE
    if not path.is_file():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def start_tracking(accelerator: Accelerator, cfg: Config, run_dir: Path) -> None:
    """Initialises the configured tracker on the main process; a tracker failure falls back to offline/none."""
    if cfg.log.tracker == "none":
        return
    kwargs = {}
    if cfg.log.tracker == "wandb" and accelerator.is_main_process:
        wandb = {"dir": str(run_dir), "name": run_dir.name, "id": _wandb_run_id(run_dir), "resume": "allow"}
        kwargs = {"wandb": {**wandb, "mode": _wandb_mode()}}
    try:
        accelerator.init_trackers(cfg.log.project, config=to_dict(cfg), init_kwargs=kwargs)
    except Exception as err:  # noqa: BLE001 - a network or login failure must not cost the run
        if cfg.log.tracker != "wandb" or kwargs.get("wandb", {}).get("mode") == "offline":
            raise
        print(f"[wgan-gp] warning: W&B did not start online ({err}); logging offline instead.", flush=True)
        kwargs["wandb"]["mode"] = "offline"
        accelerator.init_trackers(cfg.log.project, config=to_dict(cfg), init_kwargs=kwargs)
    if cfg.log.tracker == "wandb" and accelerator.is_main_process:
        # W&B's own step is the generator step (accelerator.log(..., step=step)); images_seen is the other x axis.
        accelerator.get_tracker("wandb", unwrap=True).define_metric("images_seen", summary="max")


def log_image(accelerator: Accelerator, name: str, path: Path, step: int) -> None:
    """Sends a PNG the run wrote (sample grid, toy scatter) to the trackers; main process only."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log_images({name: [image]}, step=step)
        elif tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")


LOWER_IS_BETTER = ("w1", "fid", "kid", "fd", "frechet", "distance")


def summarise(records: list[dict]) -> dict[str, dict[str, float]]:
    """Last and best value (and the step of the best) of every eval_* metric over a run's metrics records."""
    out: dict[str, dict[str, float]] = {}
    for record in records:
        for key, value in record.items():
            if not key.startswith("eval_"):
                continue
            lower = any(word in key for word in LOWER_IS_BETTER)
            entry = out.setdefault(key, {"last": value, "best": value, "best_step": record["step"]})
            entry["last"] = value
            if (value < entry["best"]) if lower else (value > entry["best"]):
                entry["best"], entry["best_step"] = value, record["step"]
    return out


def write_summary(accelerator: Accelerator, run_dir: Path) -> None:
    """summary.json (last and best of each evaluation metric) in the run folder, and the same in the W&B summary."""
    if not accelerator.is_main_process:
        return
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    summary = summarise([json.loads(line) for line in lines if line.strip()])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            for key, entry in summary.items():
                tracker.tracker.summary[f"{key}_best"] = entry["best"]
                tracker.tracker.summary[f"{key}_last"] = entry["last"]
