"""Checkpoints: Accelerate's save_state plus our own state, written to a temporary folder and renamed into place.

A checkpoint folder `checkpoints/step-00001000/` holds Accelerate's state (both models, both optimizers, the grad
scaler, every process's RNG), `trainer_state.json` (step, data position, per-process parameter fingerprints),
`config.yaml` (the resolved config), `ema.safetensors` and `generator.safetensors` (the export used for sampling:
the EMA generator when there is one). `trainer_state.json` is written last and records the SHA-256 of every other
file, checked before a resume: a cut or flipped file is never loaded. Nothing here needs pickle to be read back
except Accelerate's RNG and optimizer files, which Accelerate loads with weights_only=True.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.digest import file_sha256
from trainer.errors import TrainerError

STATE_FILE = "trainer_state.json"
EXPORT_FILE = "generator.safetensors"
EMA_FILE = "ema.safetensors"
PREFIX = "step-"
NAME = re.compile(r"step-(\d{8,})")  # a checkpoint's folder name; anything else in checkpoints/ is not ours
T = TypeVar("T")


@dataclass
class Snapshot:
    """What a checkpoint holds of a run besides Accelerate's state (networks, optimizers, grad scaler, every process's
    RNG): trainer.core.build.Training.state_dict() makes it, Training.load_state_dict() reads its record back."""

    step: int
    shared: dict[str, Any]  # the same on every process: data position, number of classes
    per_process: dict[str, Any]  # this process's: parameter fingerprints, the log interval's running statistics
    config_yaml: str  # the resolved config as written out
    export: nn.Module  # generator.safetensors: what trainer.sample and trainer.export read
    ema: Optional[nn.Module]  # ema.safetensors


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, state file present), oldest first."""
    folder = checkpoint_dir(run_dir)
    found = (
        [p for p in folder.iterdir() if NAME.fullmatch(p.name) and p.is_dir() and (p / STATE_FILE).is_file()]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve(run_dir: Path, resume: Optional[str], option: str = "run.resume") -> Optional[Path]:
    """The checkpoint to resume from: None for a fresh run or `latest` with none yet; raises for a missing path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        fix = (
            "Use run.resume=latest to continue the newest checkpoint in run.dir, or one of"
            if option == "run.resume"
            else "Use one of"
        )
        raise TrainerError(
            f"{option} {resume}: no checkpoint there (a checkpoint folder holds {STATE_FILE}). {fix}: "
            f"{', '.join(str(p) for p in list_checkpoints(run_dir)) or f'none exist yet in {checkpoint_dir(run_dir)}'}."
        )
    return path


def verify(path: Path) -> dict[str, Any]:
    """The state record of checkpoint `path` after checking every file against the SHA-256 it recorded at saving
    (and that its config parses); raises TrainerError naming the first file that differs."""
    try:
        try:
            record = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{STATE_FILE} is unreadable: {err}") from None
        for name, digest in record.get("files", {}).items():
            if not (path / name).is_file():
                raise ValueError(f"{name} is missing")
            if file_sha256(path / name) != digest:
                raise ValueError(f"{name} differs from the SHA-256 recorded when it was written (cut or corrupted)")
        OmegaConf.create(read_config_yaml(path))
        return record
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise TrainerError(
            f"checkpoint {path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:300]})."
        ) from None


def candidates(run_dir: Path, resume: Optional[str], chosen: Path) -> list[Path]:
    """`chosen`, then under run.resume=latest every older checkpoint, newest first: what a fallback may try."""
    if resume != "latest":
        return [chosen]
    step = int(chosen.name[len(PREFIX) :])
    return [chosen, *(p for p in reversed(list_checkpoints(run_dir)) if int(p.name[len(PREFIX) :]) < step)]


def first_intact(paths: list[Path], attempt: Callable[[Path], T], warn: bool) -> tuple[Path, T]:
    """The first of `paths` for which `attempt` (verify, or verify and load) succeeds, with its result; each failure
    before the last is a warning naming the file and the checkpoint fallen back to, the last one the error."""
    for i, path in enumerate(paths):
        try:
            return path, attempt(path)
        except TrainerError as err:
            if i == len(paths) - 1:
                fix = (
                    "point run.resume at an earlier checkpoint, or start a new run.dir"
                    if i == 0
                    else "no earlier checkpoint is intact; start a new run.dir"
                )
                raise TrainerError(f"{err} {fix[0].upper()}{fix[1:]}.") from None
            if warn:
                print(f"[wgan-gp] warning: {err} Falling back to {paths[i + 1].name}.", flush=True)
    raise AssertionError("unreachable: there is at least one candidate")


def choose(run_dir: Path, resume: Optional[str], warn: bool) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The verified checkpoint to resume from and its record: run.resume=latest falls back past damaged ones with a
    warning naming the file; an explicit run.resume path that is damaged is an error."""
    chosen = resolve(run_dir, resume)
    if chosen is None:
        return None, None
    return first_intact(candidates(run_dir, resume, chosen), verify, warn)


def require_finite(modules: dict[str, nn.Module], step: int, run_dir: Path) -> None:
    """Refuses to checkpoint non-finite weights, so the newest checkpoint is always one a resume can continue."""
    for name, module in modules.items():
        params = [p for p in module.parameters()]
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
        if not bool(finite.all()):
            first = next(n for (n, _), ok in zip(module.named_parameters(), finite.tolist(), strict=True) if not ok)
            raise TrainerError(
                f"the {name}'s weights hold NaN/Inf at step {step} (first in {first}): the updates diverged, so no "
                f"checkpoint was written and the newest one in {checkpoint_dir(run_dir)} is the last good one. Lower "
                f"optim.lr_d/optim.lr_g (or raise loss.gp_weight), then resume with run.resume=latest."
            )


def _state_dict_fp32(module: nn.Module) -> dict:
    return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}


def save(accelerator: Accelerator, run_dir: Path, snapshot: Snapshot, keep: int) -> Path:
    """Collective: every process calls it with its own snapshot; the per-process part is stored per process, each key
    as a list indexed by process. Returns the final folder. The mirror image of `load`."""
    step, per_process = snapshot.step, snapshot.per_process
    folder = checkpoint_dir(run_dir)
    final, tmp = folder / f"{PREFIX}{step:08d}", folder / f".tmp-{PREFIX}{step:08d}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        per_rank = gather_object([per_process])
        if accelerator.is_main_process:
            (tmp / "config.yaml").write_text(snapshot.config_yaml)
            save_file(_state_dict_fp32(snapshot.export), str(tmp / EXPORT_FILE))
            if snapshot.ema is not None:
                save_file(_state_dict_fp32(snapshot.ema), str(tmp / EMA_FILE))
            files = {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
            record = {**snapshot.shared, "step": step, "world_size": accelerator.num_processes, "files": files}
            record.update({key: [rank[key] for rank in per_rank] for key in per_process})
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=1))
            publish(tmp, final)
            _prune(run_dir, keep)
    except Exception as err:  # noqa: BLE001 - a full disk surfaces as OSError, SafetensorError or torch's RuntimeError
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200]
        if not isinstance(err, OSError) and _free_bytes(folder) < FULL:  # torch's and safetensors' writers say less
            reason = f"No space left on device: {reason}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TrainerError(
            f"writing checkpoint {final.name} into {folder} failed ({reason}); the earlier checkpoints are "
            f"untouched. Free space or fix permissions there, then continue with run.resume=latest."
        ) from None
    accelerator.wait_for_everyone()
    return final


FULL = 1 << 20  # bytes left free on a disk that counts as full


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return FULL


def publish(tmp: Path, final: Path) -> None:
    """The complete checkpoint takes its final name: atomic on one file system, so it is either complete or absent."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _prune(run_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load(accelerator: Accelerator, path: Path, ema: Optional[nn.Module]) -> dict[str, Any]:
    """The mirror image of `save`: restores networks, optimizers, scaler and this process's RNG (Accelerate) and the
    EMA in place; returns the record (trainer.core.build.Training.load_state_dict reads the rest from it)."""
    try:
        accelerator.load_state(str(path))
        record = json.loads((path / STATE_FILE).read_text())
        if ema is not None:
            ema.load_state_dict(load_file(str(path / EMA_FILE)))  # CPU, then copied (safetensors rejects cpu:0)
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise TrainerError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {' '.join(str(err).split())[:300]}): it "
            f"may be cut off or from another version."
        ) from None
    return record


def load_with_fallback(
    accelerator: Accelerator, run_dir: Path, chosen: Path, resume: Optional[str], ema: Optional[nn.Module]
) -> tuple[Path, dict[str, Any]]:
    """Verifies and loads `chosen`; under run.resume=latest a checkpoint that verifies but cannot be loaded falls back
    to the next older intact one (verified, then loaded), with a warning."""
    attempt = lambda path: (verify(path), load(accelerator, path, ema))[1]  # noqa: E731
    return first_intact(candidates(run_dir, resume, chosen), attempt, accelerator.is_main_process)


def read_config_yaml(path: Path) -> str:
    return (Path(path) / "config.yaml").read_text()
