"""The launcher's flags that reach the script as ACCELERATE_* variables, turned into config keys before the gate.

Imports nothing heavy (no torch), so that train.py refuses a bad flag as fast as a bad key.
"""

from __future__ import annotations

import os

from trainer.config import COMPILE_BACKENDS, PRECISIONS, Config
from trainer.errors import EnvironmentVariableError, TrainerError

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb.init accepts as mode


def environment_variables(cfg: Config) -> None:
    """The variables torchrun, `accelerate launch` and W&B set (or a stale shell left behind), checked before they
    are used: a malformed one is one message naming it and the fix, not a traceback from deep inside a library."""
    counts = {name: os.environ.get(name) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    for name, value in counts.items():
        if value is not None and not (value.strip().isdigit()):
            raise EnvironmentVariableError(
                f"the environment variable {name}={value!r} is not a whole number. torchrun and accelerate launch set "
                f"it for their workers; in a plain shell it is left over from something else: unset {name} (or start "
                f"the job with torchrun / accelerate launch)."
            )
    world, rank = int(counts["WORLD_SIZE"] or 1), counts["RANK"]
    if world < 1 or (rank is not None and int(rank) >= world):
        raise EnvironmentVariableError(
            f"the environment says RANK={rank} of WORLD_SIZE={world}, which is no process of such a job. A plain "
            f"`python train.py` with a stale RANK or WORLD_SIZE in the shell: unset RANK WORLD_SIZE LOCAL_RANK, or "
            f"launch with torchrun / accelerate launch, which set them."
        )
    port = os.environ.get("MASTER_PORT")
    if port is not None and not (port.strip().isdigit() and 0 < int(port) < 65536):
        raise EnvironmentVariableError(f"MASTER_PORT={port!r} is no TCP port (1-65535). Unset it, or give a free port.")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if cfg.train.precision is None and precision is not None and precision not in PRECISIONS:
        raise TrainerError(
            f"ACCELERATE_MIXED_PRECISION={precision!r} (accelerate launch --mixed_precision) is not a precision: "
            f"{', '.join(PRECISIONS)}. Fix the launcher's flag or config, or set train.precision."
        )
    mode = os.environ.get("WANDB_MODE")
    if cfg.log.tracker == "wandb" and mode is not None and mode not in WANDB_MODES:
        raise TrainerError(
            f"WANDB_MODE={mode!r} is not a W&B mode ({', '.join(WANDB_MODES)}): W&B would refuse to start. Set "
            f"WANDB_MODE=offline (no login or network needed), or unset it."
        )


def launcher_flags(cfg: Config) -> None:
    """`accelerate launch` flags that reach the script as ACCELERATE_* variables: --dynamo_backend X becomes
    speed.compile=true speed.compile_backend=x (what the README's speed options describe: with speed.compile_scope's
    default, each whole loss compiled, the penalty inside); gradient accumulation is refused (see the message).
    Called by trainer.core.gate.configure(launch=True), before the gate judges the result."""
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip().lower()
    if steps not in ("1", "auto", ""):
        raise TrainerError(
            f"--gradient_accumulation_steps {steps} (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) is not supported: each "
            f"critic and generator update here is one backward of one batch (the penalty's double backward, the "
            f"non-finite guard and the CUDA graph see whole updates), and Accelerate would silently divide every loss "
            f"by {steps}. No critic has batch statistics, so a {steps}-times batch is the same update: set "
            f"train.batch_size (and train.batch_size_g) {steps} times larger, or use more processes, and drop the flag."
        )
    backend = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower()
    if backend == "no":
        return
    flag = f"--dynamo_backend {backend}"
    if backend not in COMPILE_BACKENDS:
        raise TrainerError(
            f"{flag} cannot be used: this trainer compiles with speed.compile, whose backends are "
            f"{', '.join(COMPILE_BACKENDS)}. Pass one of those (or --dynamo_backend no) to accelerate launch."
        )
    mode = os.environ.get("ACCELERATE_DYNAMO_MODE", "default")
    if mode not in ("default", ""):
        raise TrainerError(f"{flag} --dynamo_mode {mode}: only the default mode is mapped; drop --dynamo_mode.")
    if cfg.speed.compile and cfg.speed.compile_backend != backend:
        raise TrainerError(
            f"{flag} contradicts speed.compile_backend={cfg.speed.compile_backend}; keep one of the two."
        )
    cfg.speed.compile, cfg.speed.compile_backend = True, backend
    cfg._launcher_backend = True  # type: ignore[attr-defined]  # the gate names the flag in its refusals
    if os.environ.get("RANK", "0") == "0":
        print(f"[wgan-gp] {flag}: speed.compile=true speed.compile_backend={backend}", flush=True)
