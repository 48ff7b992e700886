"""The run folder: refuses to overwrite checkpoints, checks a resume is compatible, writes the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from omegaconf import OmegaConf

from trainer.config import Config, to_dict, to_yaml
from trainer.errors import TrainerError
from trainer.run import checkpoint

# Keys that decide what the checkpoint's tensors mean: a resume may not change them.
STRUCTURAL = ("model.name", "model.z_dim", "model.width", "data.name", "data.image_size", "loss.name", "optim.name")


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


def prepare_run_dir(cfg: Config, accelerator: Accelerator) -> tuple[Path, Optional[Path]]:
    """Returns (run folder, checkpoint to resume from or None) after the checks; writes config.yaml."""
    run_dir = Path(cfg.run.dir)
    resume_from = checkpoint.resolve(run_dir, cfg.run.resume)
    existing = checkpoint.list_checkpoints(run_dir)
    if resume_from is None and existing and cfg.run.resume is None:
        raise TrainerError(
            f"run.dir={run_dir} already holds checkpoints (newest {existing[-1].name}); a fresh run there would mix "
            f"with them. Continue it with run.resume=latest, or choose another run.dir."
        )
    if resume_from is not None:
        changed = check_compatible(cfg, checkpoint.read_config_yaml(resume_from), resume_from)
        if changed and accelerator.is_main_process:
            print(f"[wgan-gp] resuming with changed settings: {', '.join(changed)}", flush=True)
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(to_yaml(cfg))
        except OSError as err:
            raise TrainerError(
                f"run.dir={run_dir} cannot be written ({err.strerror}). Choose a writable run.dir."
            ) from None
    accelerator.wait_for_everyone()
    return run_dir, resume_from
