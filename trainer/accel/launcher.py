"""The launcher's flags that reach the script as ACCELERATE_* variables, turned into config keys before the gate.

Imports nothing heavy (no torch), so that train.py refuses a bad flag as fast as a bad key.
"""

from __future__ import annotations

import os

from trainer.config import COMPILE_BACKENDS, Config
from trainer.errors import TrainerError


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
