"""Checkpoints: Accelerate's save_state plus our own state, written to a temporary folder and renamed into place.

A checkpoint folder `checkpoints/step-00001000/` holds Accelerate's state (both models, both optimizers, the grad
scaler, every process's RNG), `trainer_state.json` (step, data position, per-process parameter fingerprints),
`config.yaml` (the resolved config), `ema.safetensors` and `generator.safetensors` (the export used for sampling:
the EMA generator when there is one). Nothing here needs pickle to be read back except Accelerate's RNG and
optimizer files, which Accelerate loads with weights_only=True.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.errors import TrainerError

STATE_FILE = "trainer_state.json"
EXPORT_FILE = "generator.safetensors"
EMA_FILE = "ema.safetensors"
PREFIX = "step-"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, state file present), oldest first."""
    folder = checkpoint_dir(run_dir)
    found = (
        [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()] if folder.is_dir() else []
    )
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve(run_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from: None for a fresh run or `latest` with none yet; raises for a missing path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise TrainerError(
            f"run.resume={resume}: no checkpoint there (a checkpoint folder holds {STATE_FILE}). Use run.resume=latest "
            f"to continue the newest checkpoint in run.dir, or one of: "
            f"{', '.join(str(p) for p in list_checkpoints(run_dir)) or 'none exist yet'}."
        )
    return path


def _state_dict_fp32(module: nn.Module) -> dict:
    return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}


def save(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    config_yaml: str,
    export: nn.Module,
    ema: Optional[nn.Module],
    fingerprints: dict[str, str],
    keep: int,
) -> Path:
    """Collective: every process calls it. Returns the final folder."""
    folder = checkpoint_dir(run_dir)
    final, tmp = folder / f"{PREFIX}{step:08d}", folder / f".tmp-{PREFIX}{step:08d}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        per_rank = gather_object([fingerprints])
        if accelerator.is_main_process:
            (tmp / "config.yaml").write_text(config_yaml)
            save_file(_state_dict_fp32(export), str(tmp / EXPORT_FILE))
            if ema is not None:
                save_file(_state_dict_fp32(ema), str(tmp / EMA_FILE))
            record = {**state, "step": step, "world_size": accelerator.num_processes, "fingerprints": per_rank}
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=1))
            publish(tmp, final)
            _prune(run_dir, keep)
    except OSError as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TrainerError(
            f"writing checkpoint {final.name} into {folder} failed ({err.strerror or err}); the earlier checkpoints "
            f"are untouched. Free space or fix permissions there, then continue with run.resume=latest."
        ) from None
    accelerator.wait_for_everyone()
    return final


def publish(tmp: Path, final: Path) -> None:
    """The complete checkpoint takes its final name: atomic on one file system, so it is either complete or absent."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _prune(run_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load(accelerator: Accelerator, path: Path, ema: Optional[nn.Module]) -> dict[str, Any]:
    """Restores models, optimizers, scaler and this process's RNG in place; returns the trainer state record."""
    try:
        accelerator.load_state(str(path))
        record = json.loads((path / STATE_FILE).read_text())
        if ema is not None:
            ema.load_state_dict(load_file(str(path / EMA_FILE)))  # CPU, then copied (safetensors rejects cpu:0)
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise TrainerError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {str(err)[:300]}). It may be cut off or from "
            f"another version; point run.resume at an earlier checkpoint in {path.parent}, or start a new run.dir."
        ) from None
    return record


def load_with_fallback(
    accelerator: Accelerator, run_dir: Path, chosen: Path, resume: str, ema: Optional[nn.Module]
) -> tuple[Path, dict[str, Any]]:
    """Loads `chosen`; with run.resume=latest an unreadable checkpoint falls back to the previous one (a warning)."""
    candidates = [chosen] if resume != "latest" else list(reversed(list_checkpoints(run_dir)))
    for i, path in enumerate(candidates):
        try:
            return path, load(accelerator, path, ema)
        except TrainerError as err:
            if i == len(candidates) - 1:
                raise
            if accelerator.is_main_process:
                print(f"[wgan-gp] warning: {err} Falling back to {candidates[i + 1].name}.", flush=True)
    raise AssertionError("unreachable: resolve() returned a checkpoint, so there is at least one candidate")


def read_config_yaml(path: Path) -> str:
    return (Path(path) / "config.yaml").read_text()
