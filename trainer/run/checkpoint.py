"""Checkpoints: Accelerate's save_state plus our own state, written to a temporary folder and renamed into place.

A checkpoint folder `checkpoints/step-00001000/` holds Accelerate's state (both models, both optimizers, the grad
scaler, every process's RNG), `trainer_state.json` (step, data position, per-process parameter fingerprints),
`config.yaml` (the resolved config), `ema.safetensors` and `generator.safetensors` (the export used for sampling:
the EMA generator when there is one). `trainer_state.json` is written last and records the SHA-256 of every other
file, checked before a resume: a cut or flipped file is never loaded. The record covers itself too: its last key,
`record_sha256`, is the SHA-256 of the rest of it (canonical JSON), and its fields are checked against a schema, so an
edited step or a null is a damaged checkpoint like a flipped bit. Records without it predate record hashing and are
still accepted, with a warning. Nothing here needs pickle to be read back except Accelerate's RNG and optimizer files,
which Accelerate loads with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME, gather_object
from accelerate.utils import load as accelerate_load
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
RECORD_DIGEST = "record_sha256"  # the record's own digest, its last key (records without it are legacy ones)
HEX64 = re.compile(r"[0-9a-f]{64}")
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


def step_of(path: Path) -> Optional[int]:
    """The step a checkpoint folder's name says (step-00002000 -> 2000), or None for a name that is not ours."""
    found = NAME.fullmatch(Path(path).name)
    return int(found.group(1)) if found else None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, state file present), oldest first."""
    folder = checkpoint_dir(run_dir)
    found = (
        [p for p in folder.iterdir() if step_of(p) is not None and p.is_dir() and (p / STATE_FILE).is_file()]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=step_of)


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


def record_digest(record: dict[str, Any]) -> str:
    """The SHA-256 of a state record without its own digest, as canonical JSON (sorted keys, no spaces): any change
    of a value (20 -> 28, a null, a key added twice) changes it, a change of layout does not."""
    body = {key: value for key, value in record.items() if key != RECORD_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_count(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _per_process(record: dict[str, Any], key: str, entry_ok: Callable[[Any], bool]) -> Optional[str]:
    entries = record.get(key, [])
    if not isinstance(entries, list) or len(entries) not in (0, record["world_size"]):
        return f"{key} must be a list with one entry per process ({record['world_size']})"
    return None if all(isinstance(e, dict) and entry_ok(e) for e in entries) else f"{key} holds a malformed entry"


def _stats_ok(entry: dict) -> bool:
    """One process's running statistics: sums and maxima numbers, counts whole numbers, each by metric name."""
    sums, counts, maxima = (entry.get(part) for part in ("sums", "counts", "maxima"))
    if not (isinstance(sums, dict) and isinstance(counts, dict) and isinstance(maxima, dict)):
        return False
    return all(map(_is_number, [*sums.values(), *maxima.values()])) and all(map(_is_count, counts.values()))


def schema_problem(record: Any, path: Path) -> Optional[str]:
    """What is wrong with a state record's fields (their types, and a step that matches the folder's name), or None.
    num_classes, fingerprints and stats are optional (older checkpoints lack some); unknown keys are allowed."""
    if not isinstance(record, dict):
        return f"it holds a {type(record).__name__}, not a JSON object"
    if not _is_count(record.get("step")):
        return f"step must be a whole number >= 0, not {json.dumps(record.get('step'))}"
    if step_of(path) not in (None, record["step"]):
        return f"step {record['step']} is not the step of its folder {path.name}"
    if not _is_count(record.get("world_size"), 1):
        return f"world_size must be a whole number >= 1, not {json.dumps(record.get('world_size'))}"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "files must be an object of file name -> SHA-256"
    for name, digest in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or name in (STATE_FILE, "") or not isinstance(digest, str):
            return f"files names {json.dumps(name)}, which is no file of the checkpoint"
        if not HEX64.fullmatch(digest):
            return f"the SHA-256 of {name} is not 64 hex digits"
    data = record.get("data")
    if not isinstance(data, dict) or not all(_is_count(v) for v in data.values()):
        return "data (the data position) must be an object of whole numbers >= 0"
    if "num_classes" in record and not _is_count(record["num_classes"]):
        return f"num_classes must be a whole number >= 0, not {json.dumps(record['num_classes'])}"
    texts = lambda e: all(isinstance(k, str) and isinstance(v, str) for k, v in e.items())  # noqa: E731
    return _per_process(record, "fingerprints", texts) or _per_process(record, "stats", _stats_ok)


_noted_legacy: set[Path] = set()  # checkpoints already reported as legacy by this process (verify runs twice)


def _note_legacy(path: Path, warn: bool) -> None:
    if warn and path.resolve() not in _noted_legacy:
        _noted_legacy.add(path.resolve())
        print(
            f"[wgan-gp] warning: checkpoint {path} predates record hashing: its files are checked, but its "
            f"{STATE_FILE} carries no {RECORD_DIGEST} of itself (checkpoints written from now on do).",
            flush=True,
        )


def _read_record(path: Path) -> dict[str, Any]:
    """The state record after its own digest (when it has one) and its schema; raises ValueError naming the file."""
    try:
        record = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{STATE_FILE} is unreadable: {err}") from None
    if isinstance(record, dict) and RECORD_DIGEST in record and record[RECORD_DIGEST] != record_digest(record):
        raise ValueError(f"{STATE_FILE} differs from the SHA-256 it recorded of itself (edited or corrupted)")
    problem = schema_problem(record, path)
    if problem is not None:
        raise ValueError(f"{STATE_FILE} is malformed: {problem}")
    return record


def verify(path: Path, warn: Optional[bool] = None) -> dict[str, Any]:
    """The state record of checkpoint `path` after checking the record itself (its own digest and its fields),
    every file against the SHA-256 it recorded at saving, and that its config parses; raises TrainerError naming the
    first file that differs. A legacy record (no digest of itself) is accepted with a one-line warning, printed once
    per checkpoint by the process that `warn`s (default: the launcher's rank 0)."""
    warn = os.environ.get("RANK", "0") == "0" if warn is None else warn
    try:
        record = _read_record(path)
        for name, digest in record["files"].items():
            if not (path / name).is_file():
                raise ValueError(f"{name} is missing")
            if file_sha256(path / name) != digest:
                raise ValueError(f"{name} differs from the SHA-256 recorded when it was written (cut or corrupted)")
        OmegaConf.create(read_config_yaml(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise TrainerError(
            f"checkpoint {path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:300]})."
        ) from None
    if RECORD_DIGEST not in record:
        _note_legacy(path, warn)
    return record


def candidates(run_dir: Path, resume: Optional[str], chosen: Path) -> list[Path]:
    """`chosen`, then under run.resume=latest every older checkpoint, newest first: what a fallback may try."""
    if resume != "latest":
        return [chosen]
    step = step_of(chosen)
    return [chosen, *(p for p in reversed(list_checkpoints(run_dir)) if step_of(p) < step)]


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
    return first_intact(candidates(run_dir, resume, chosen), lambda path: verify(path, warn), warn)


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
            record[RECORD_DIGEST] = record_digest(record)  # last: the record covers itself
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
    """Collective, the mirror image of `save`: restores networks, optimizers, scaler and this process's RNG
    (Accelerate) and the EMA in place; returns the record (trainer.core.build.Training.load_state_dict reads the rest
    from it). Every process gets the same verdict: one process's unreadable file fails the load on all of them, so
    a fallback under run.resume=latest moves them to the same older checkpoint."""
    problem, record = None, {}
    try:
        accelerator.load_state(str(path))
        _require_rng_restored(path, accelerator.process_index)
        record = _read_record(path)
        if ema is not None:
            ema.load_state_dict(load_file(str(path / EMA_FILE)))  # CPU, then copied (safetensors rejects cpu:0)
    except pickle.UnpicklingError:  # torch's own text would suggest weights_only=False, which runs the file's code
        problem = f"{_refused_file(path)} holds pickled data that is not tensors: refused unread, as it could run code"
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing to the user
        problem = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    problems = [p for p in gather_object([problem]) if p]
    if problems:
        raise TrainerError(
            f"checkpoint {path} could not be read ({problems[0]}): it may be cut off, altered or from another version."
        )
    return record


def _refused_file(path: Path) -> str:
    """The first of a checkpoint's pickled files (Accelerate's) that weights_only=True refuses, read as Accelerate does
    (the refusal itself does not say which file it was)."""
    for file in sorted(f for f in path.iterdir() if f.suffix in (".bin", ".pkl", ".pt")):
        try:
            accelerate_load(file)
        except pickle.UnpicklingError:
            return file.name
        except Exception:  # noqa: BLE001, S112 - another fault, not the refusal being named
            continue
    return "a file"


def _require_rng_restored(path: Path, process: int) -> None:
    """Raises unless Accelerate restored this process's RNG from its random_states file.

    Accelerate loads that file with weights_only=True, but when it refuses it (an altered file, a pickled object)
    or cannot apply it, it only logs and carries on: the run would resume with its noise where the start left it,
    no longer the run it continues, and nobody would know. That is an error here, not a warning: such a checkpoint
    takes the path of any checkpoint that cannot be loaded (run.resume=latest falls back to the previous one with
    a warning naming the file; an explicit run.resume path stops), because a resume promises the same run. The file
    is read again the same way (Accelerate's loader: tensors, numpy's RNG types) and compared with the live state."""
    name = f"{RNG_STATE_NAME}_{process}.pkl"
    if not (path / name).is_file():  # a process the checkpoint did not have (a resume on more processes)
        print(f"[wgan-gp] warning: {path} holds no {name}: process {process} starts a fresh RNG stream.", flush=True)
        return
    try:
        states = accelerate_load(path / name)
        saved = [states["torch_manual_seed"]]
        live = [torch.get_rng_state()]
        if "torch_cuda_manual_seed" in states and torch.cuda.is_available():  # the devices both have
            pairs = list(zip(states["torch_cuda_manual_seed"], torch.cuda.get_rng_state_all(), strict=False))
            saved, live = saved + [s for s, _ in pairs], live + [g for _, g in pairs]
    except pickle.UnpicklingError:
        raise ValueError(
            f"{name} holds pickled data that is not tensors (refused unread, as it could run code), so this "
            f"process's RNG cannot be restored"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever the refusal, the RNG was not restored
        raise ValueError(
            f"{name} was refused ({type(err).__name__}: {' '.join(str(err).split())[:160]}), so this process's RNG "
            f"cannot be restored"
        ) from None
    if not all(torch.equal(s.cpu(), g.cpu()) for s, g in zip(saved, live, strict=True)):
        raise ValueError(f"{name} could not be applied (Accelerate only logged it): this process's RNG is not restored")


def load_with_fallback(
    accelerator: Accelerator, run_dir: Path, chosen: Path, resume: Optional[str], ema: Optional[nn.Module]
) -> tuple[Path, dict[str, Any]]:
    """Verifies and loads `chosen`; under run.resume=latest a checkpoint that verifies but cannot be loaded falls back
    to the next older intact one (verified, then loaded), with a warning."""
    attempt = lambda path: (verify(path, accelerator.is_main_process), load(accelerator, path, ema))[1]  # noqa: E731
    return first_intact(candidates(run_dir, resume, chosen), attempt, accelerator.is_main_process)


def read_config_yaml(path: Path) -> str:
    return (Path(path) / "config.yaml").read_text()
