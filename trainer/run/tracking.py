"""Experiment trackers (W&B, TensorBoard) through Accelerate, on the main process, never fatal to the run."""

from __future__ import annotations

import json
import netrc
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlparse

from accelerate import Accelerator

from trainer.config import Config, to_dict

WANDB_ID_FILE = "wandb_id.txt"  # the W&B run id, so a resumed run continues the same W&B run
LOWER_IS_BETTER = ("w1", "fid", "kid", "fd", "frechet", "distance")
BEST_KEYS = ("eval_fid", "eval_fd_classifier", "eval_w1")  # the first one a run logs picks the 'best' checkpoint


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
    """The run folder's W&B id: a sweep agent's WANDB_RUN_ID when set (kept for the trial's resumes), else the saved
    one, else a new one."""
    path = run_dir / WANDB_ID_FILE
    saved = path.read_text().strip() if path.is_file() else None
    agent = os.environ.get("WANDB_RUN_ID", "").strip() or None
    if agent and saved and agent != saved:
        print(f"[wgan-gp] warning: WANDB_RUN_ID={agent} replaces the W&B run {saved} of {run_dir}.", flush=True)
    run_id = agent or saved or uuid.uuid4().hex[:12]
    if run_id != saved:
        path.write_text(run_id)
    return run_id


def wandb_init_kwargs(cfg: Config, run_dir: Path) -> dict:
    """wandb.init's arguments: the run folder, its id (resumed when it exists), log.group/tags/entity/job_type/notes.

    Every config value W&B records (group, tags, entity, job type, notes) is the config's as written out: a key set
    by `${oc.env:...}` goes as that text, as in config.yaml, since W&B writes them into its files (and uploads them).
    `dir` and the run name (its folder's name) are the real run folder's: W&B records that path itself (its run
    record and debug.log hold it, measured), so a name taken from it reveals nothing more, and a sweep's trials
    (run.dir=runs/sweeps/${oc.env:WANDB_SWEEP_ID,sweep}/${oc.env:WANDB_RUN_ID,run}) keep their run ids as names."""
    log = to_dict(cfg)["log"]
    extra = {key: log[key] for key in ("group", "entity", "job_type", "notes")}
    kwargs = {"dir": str(run_dir), "name": run_dir.name, "id": _wandb_run_id(run_dir), "resume": "allow"}
    kwargs.update({key: str(value) for key, value in extra.items() if value is not None})
    if log["tags"]:
        kwargs["tags"] = [str(tag) for tag in log["tags"]]
    return {**kwargs, "mode": _wandb_mode()}


def start_tracking(accelerator: Accelerator, cfg: Config, run_dir: Path, execution: dict | None = None) -> None:
    """Initialises the configured tracker on the main process; W&B that cannot start online falls back to offline.
    Its config is the run's (as written out) plus, under `execution`, how the run executes (trainer.accel.plan)."""
    if cfg.log.tracker == "none":
        return
    written = to_dict(cfg)  # interpolated keys as their `${...}` text: the tracker writes (and uploads) all of it
    config = {**written, **({"execution": execution} if execution else {})}
    if cfg.log.tracker == "tensorboard":
        config = flat_hparams(config)
    project = _tracker_project(cfg, str(written["log"]["project"]), accelerator.is_main_process)
    main_wandb = cfg.log.tracker == "wandb" and accelerator.is_main_process
    kwargs = {"wandb": wandb_init_kwargs(cfg, run_dir)} if main_wandb else {}
    try:
        accelerator.init_trackers(project, config=config, init_kwargs=kwargs)
    except Exception as err:  # noqa: BLE001 - a network or login failure must not cost the run
        if cfg.log.tracker != "wandb" or kwargs.get("wandb", {}).get("mode") == "offline":
            raise
        print(f"[wgan-gp] warning: W&B did not start online ({err}); logging offline instead.", flush=True)
        _forget_failed_wandb(accelerator)
        kwargs["wandb"]["mode"] = "offline"
        accelerator.init_trackers(project, config=config, init_kwargs=kwargs)
    if main_wandb:
        run = accelerator.get_tracker("wandb", unwrap=True)
        # W&B's own step is the generator step (accelerator.log(..., step=step)); images_seen is the other x axis.
        run.define_metric("images_seen", summary="max")
        # Every evaluation metric, whatever trainer.metrics.evaluate returns: min, max and last in the summary (the
        # best is one of the first two; write_summary adds eval_*_best by each metric's direction at the end).
        run.define_metric("eval_*", summary="min,max,last")


def flat_hparams(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The config as TensorBoard's hparams take it: one dotted key per leaf (`loss.name`), each an int, float, str
    or bool; a list as its JSON text, None as "null" (SummaryWriter.add_hparams refuses anything else)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif value is None or isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


PROJECT_FORBIDDEN = re.compile(r"[/\\#?%:]")  # characters W&B refuses in a project name (offline too: UsageError)


def _tracker_project(cfg: Config, written: str, main: bool) -> str:
    """The project the trackers get: log.project, or where it comes from an interpolation its text, never its value
    (W&B writes the project into its files), with the characters W&B refuses in a name replaced by '_'."""
    if written == cfg.log.project:
        return written
    project = PROJECT_FORBIDDEN.sub("_", written)
    if main:
        print(
            f"[wgan-gp] warning: log.project={written} is logged as the project '{project}' (an interpolation's "
            f"text, never its value, reaches the tracker's files); give log.project directly to choose the project.",
            flush=True,
        )
    return project


def _forget_failed_wandb(accelerator: Accelerator) -> None:
    """Drops the tracker whose start failed (init_trackers would start it again) and W&B's service, which still
    holds the run id of the timed-out online start ("run ID ... is in use" otherwise)."""
    import wandb

    accelerator.trackers.clear()
    wandb.teardown()


def _lower_is_better(key: str) -> bool:
    return any(word in key for word in LOWER_IS_BETTER)


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


def summarise(records: list[dict]) -> dict[str, dict[str, float]]:
    """Last and best value (and the step of the best) of every eval_* metric over a run's metrics records."""
    out: dict[str, dict[str, float]] = {}
    for record in records:
        for key, value in record.items():
            if not key.startswith("eval_"):
                continue
            lower = _lower_is_better(key)
            entry = out.setdefault(key, {"last": value, "best": value, "best_step": record["step"]})
            entry["last"] = value
            if (value < entry["best"]) if lower else (value > entry["best"]):
                entry["best"], entry["best_step"] = value, record["step"]
    return out


def write_summary(accelerator: Accelerator, run_dir: Path) -> None:
    """summary.json (last and best of each evaluation metric) in the run folder, and the same in the W&B summary."""
    if not accelerator.is_main_process:
        return
    summary = summarise(read_records(run_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            for key, entry in summary.items():
                tracker.tracker.summary[f"{key}_best"] = entry["best"]
                tracker.tracker.summary[f"{key}_last"] = entry["last"]
                tracker.tracker.summary[f"{key}_best_step"] = entry["best_step"]


def log_checkpoint(accelerator: Accelerator, cfg: Config, ckpt: Path, step: int, run_dir: Path) -> None:
    """The checkpoint's exported generator (log.artifacts=checkpoint: and the whole folder) as W&B artifacts with the
    aliases latest, step-N and, when this step's evaluation is the run's best so far, best. Main process only."""
    if cfg.log.artifacts == "none" or not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name != "wandb":
            continue
        import wandb

        from trainer.run.checkpoint import EXPORT_FILE

        run = tracker.tracker
        scores, best = evaluation_at(run_dir, step)
        aliases = ["latest", f"step-{step}", *(["best"] if best else [])]
        metadata = {"step": step, "checkpoint": ckpt.name, **scores}
        generator = wandb.Artifact(f"generator-{run.id}", type="model", metadata=metadata)
        generator.add_file(str(ckpt / EXPORT_FILE), name=EXPORT_FILE)
        generator.add_file(str(ckpt / "config.yaml"), name="config.yaml")
        run.log_artifact(generator, aliases=aliases)
        if cfg.log.artifacts == "checkpoint":
            full = wandb.Artifact(f"checkpoint-{run.id}", type="checkpoint", metadata=metadata)
            full.add_dir(str(ckpt))
            run.log_artifact(full, aliases=aliases)


def evaluation_at(run_dir: Path, step: int) -> tuple[dict[str, float], bool]:
    """The eval_* values logged at `step` (metrics.jsonl), and whether the run's primary one (BEST_KEYS) is at its
    best there over the steps so far."""
    records = [r for r in read_records(run_dir) if r["step"] <= step]
    scores = {k: v for r in records if r["step"] == step for k, v in r.items() if k.startswith("eval_")}
    summary = summarise(records)
    key = next((k for k in BEST_KEYS if k in summary), None)
    return scores, key is not None and key in scores and summary[key]["best_step"] == step


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]
