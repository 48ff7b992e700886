"""The run folder: one run per folder (a lock), the checks before a start or resume, the resolved config.

The start order reports the user's own mistakes first: the config (trainer.core.gate), the machine
(trainer.core.gate.environment), then the data (loaded by the loop), then the folder (`claim`: lock, checkpoint
choice, compatibility), and writes `config.yaml` only once the run has really started (`write_config`).
"""

from __future__ import annotations

import difflib
import fcntl
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from accelerate import Accelerator
from omegaconf import OmegaConf

from trainer.config import Config, to_dict, to_yaml
from trainer.errors import TrainerError
from trainer.run import checkpoint

# Keys that decide what the checkpoint's tensors mean: a resume may not change them.
STRUCTURAL = ("model.name", "model.z_dim", "model.width", "data.name", "data.image_size", "loss.name", "optim.name")
LOCK_FILE = ".lock"
_held: dict[Path, Any] = {}  # run folder -> its open, flock-ed lock file (the kernel drops it when the process dies)


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def check_compatible(cfg: Config, saved_yaml: str, source: Path) -> list[str]:
    """Raises when a structural key differs from the checkpoint's; returns the harmless keys that changed."""
    now, then = _flat(to_dict(cfg)), _flat(OmegaConf.to_container(OmegaConf.create(saved_yaml)))  # type: ignore[arg-type]
    changed = sorted(k for k in now if k in then and now[k] != then[k] and k != "run.resume")
    bad = [k for k in changed if k in STRUCTURAL]
    if bad:
        diffs = "; ".join(f"{k}: checkpoint {then[k]!r}, now {now[k]!r}" for k in bad)
        raise TrainerError(
            f"cannot resume {source} with this config: {diffs}. These keys fix the checkpoint's tensors; restore "
            f"them, or start a new run.dir to train the changed setup."
        )
    return changed


@contextmanager
def claim(cfg: Config, accelerator: Accelerator) -> Iterator[tuple[Path, Optional[Path], Optional[dict]]]:
    """Locks run.dir (main process) and yields (run folder, verified checkpoint or None, its record or None).
    If the start fails inside the block, a folder this call created is removed again."""
    run_dir = Path(cfg.run.dir)
    created = not run_dir.exists()
    if created and cfg.run.resume == "latest" and accelerator.is_main_process:
        print(f"[wgan-gp] run.resume=latest: {_nothing_to_resume(run_dir)}", flush=True)
    try:
        if accelerator.is_main_process:
            lock(run_dir)
        resume_from, record = _choose(cfg, run_dir, accelerator.is_main_process)
        yield run_dir, resume_from, record
    except BaseException:
        if accelerator.is_main_process:
            release(run_dir)
            if created and run_dir.is_dir() and not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
                run_dir.rmdir()
        raise


def _nothing_to_resume(run_dir: Path) -> str:
    """The notice for run.resume=latest on a folder that does not exist: a fresh start, and near misses."""
    parent = run_dir.parent if run_dir.parent.is_dir() else Path(".")
    runs = [p.name for p in parent.iterdir() if p.is_dir() and (p / "checkpoints").is_dir()]
    close = difflib.get_close_matches(run_dir.name, runs, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(str(parent / c) for c in close)}?" if close else ""
    stop = " (Stop now with Ctrl-C if you meant to continue another run.)" if sys.stdin.isatty() else ""  # a person
    return f"run.dir={run_dir} does not exist, so there is nothing to resume: starting a FRESH run there.{hint}{stop}"


def _choose(cfg: Config, run_dir: Path, main: bool) -> tuple[Optional[Path], Optional[dict]]:
    existing = checkpoint.list_checkpoints(run_dir)
    if cfg.run.resume is None and existing:
        raise TrainerError(
            f"run.dir={run_dir} already holds checkpoints (newest {existing[-1].name}); a fresh run there would mix "
            f"with them. Continue it with run.resume=latest, or choose another run.dir."
        )
    resume_from, record = checkpoint.choose(run_dir, cfg.run.resume, warn=main)
    if resume_from is None or record is None:
        if cfg.run.resume == "latest" and run_dir.is_dir() and main:
            print(f"[wgan-gp] run.resume=latest: no checkpoint in {run_dir}, so this is a FRESH start.", flush=True)
        return None, None
    changed = check_compatible(cfg, checkpoint.read_config_yaml(resume_from), resume_from)
    if changed and main:
        print(f"[wgan-gp] resuming with changed settings: {', '.join(changed)}", flush=True)
    if record["step"] > cfg.train.steps:
        raise TrainerError(
            f"train.steps={cfg.train.steps} is below the step of the checkpoint to resume ({resume_from}, step "
            f"{record['step']}): the run is already past it. Give train.steps >= {record['step']}, or resume an "
            f"earlier checkpoint with run.resume=PATH."
        )
    return resume_from, record


def nothing_to_train(cfg: Config, record: Optional[dict], resume_from: Optional[Path]) -> Optional[str]:
    """The notice for a resume whose checkpoint is already at train.steps (the run is complete), else None."""
    if record is None or record["step"] < cfg.train.steps:
        return None
    return (
        f"nothing to train: {resume_from} is at step {record['step']} = train.steps, so the run in {cfg.run.dir} is "
        f"complete. To train longer, raise train.steps (e.g. train.steps={2 * cfg.train.steps}) with "
        f"run.resume=latest; to look at it: python -m trainer.sample {cfg.run.dir} --out grid.png"
    )


def lock(run_dir: Path) -> None:
    """One training process per run folder: an advisory flock, dropped by the kernel when the process dies."""
    key = run_dir.resolve()
    if key in _held:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as err:
        raise _unwritable(run_dir, err) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "a process that did not say who it is"
        handle.close()
        raise TrainerError(
            f"run.dir={run_dir} is in use by another training run ({other}); two runs in one folder would "
            f"interleave metrics.jsonl and overwrite each other's checkpoints. Wait for it to end, stop it "
            f"(kill -TERM writes a checkpoint), or choose another run.dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)[:300]}\n")
    handle.flush()
    _held[key] = handle


def release(run_dir: Path) -> None:
    handle = _held.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        handle.close()


def write_config(cfg: Config, accelerator: Accelerator, run_dir: Path, plan: str = "") -> None:
    """RUN_DIR/config.yaml, once the run has started (a failed start leaves none behind); `plan` is the execution
    plan's comment (trainer.accel.plan.ExecutionPlan.comment), appended as the checkpoints' copies have it."""
    if accelerator.is_main_process:
        try:
            (run_dir / "config.yaml").write_text(to_yaml(cfg) + plan)
        except OSError as err:
            raise _unwritable(run_dir, err) from None
    accelerator.wait_for_everyone()


def _unwritable(run_dir: Path, err: OSError) -> TrainerError:
    return TrainerError(f"run.dir={run_dir} cannot be written ({err.strerror}). Choose a writable run.dir.")


def forget_if_nothing_kept(run_dir: Path) -> None:
    """Removes a run folder this start created when the run failed before keeping anything (no checkpoint, no
    metrics line): a failed first start leaves no half-made folder behind to be mistaken for a run."""
    metrics = run_dir / "metrics.jsonl"
    if checkpoint.list_checkpoints(run_dir) or (metrics.is_file() and metrics.stat().st_size > 0):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
