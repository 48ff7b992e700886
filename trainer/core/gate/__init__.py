"""The gate: every refusal of a configuration, one function per concern, run before anything is built.

trainer.config parses (unknown keys, wrong types) and knows no registry; everything a parsed config can still get
wrong, one key's value or a combination of keys, is refused here, with the way out, in this order: values, names,
losses, data, compile, CUDA graph, DeepSpeed. What stays for run time is facts about the environment only:
`environment` (the device's precision and memory, once the Accelerator exists), the launcher's variables
(trainer.accel.launcher.launcher_flags, applied by `configure(launch=True)` before the gate), the NCCL version and the
process group's settings (trainer.accel.cuda_graph.check_runtime).

The concerns live by kind: `values` (one key at a time), `training` (the registries: names, losses, data), `speed`
(compile, CUDA graph, DeepSpeed), `machine` (run time: `environment`).
"""

from __future__ import annotations

from typing import Optional

from omegaconf import OmegaConf

from trainer.config import Config, load_config
from trainer.core.gate.machine import environment
from trainer.core.gate.speed import compile_options, cuda_graph, deepspeed, deepspeed_file
from trainer.core.gate.training import data, losses, names
from trainer.core.gate.values import values
from trainer.errors import TrainerError

__all__ = ["configure", "deepspeed_file", "environment", "redacted", "refuse"]

# The registries (networks, datasets, losses) import torch, which takes seconds: they are imported by the concerns
# that need them, after `values`, so that a typo'd key, a wrong type or an impossible value is refused at once.


def configure(config_file: Optional[str] = None, overrides: tuple[str, ...] = (), launch: bool = False) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides (trainer.config), then the gate. Raises TrainerError.

    `launch`: train.py's own start, where the launcher's flags (`accelerate launch --dynamo_backend ...`) become
    config keys first, so that the gate judges what will really run."""
    cfg = load_config(config_file, overrides)
    if launch:
        from trainer.accel.launcher import environment_variables, launcher_flags

        environment_variables(cfg)
        launcher_flags(cfg)
    try:
        refuse(cfg)
    except TrainerError as err:
        raise TrainerError(redacted(str(err), cfg)) from None
    return cfg


def redacted(message: str, cfg: Config) -> str:
    """`message` with every value that came from an interpolation (`${oc.env:TOKEN}`) shown as its `${...}` text:
    a refusal quotes the value it refuses, and a value read from the environment may be a secret."""
    node = OmegaConf.structured(cfg)
    for key, text in getattr(cfg, "_raw", {}).items():
        value = OmegaConf.select(node, key)
        values = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        for item in values:
            if isinstance(item, str) and len(item) >= 4:  # short values (a digit, 'no') would also hit other words
                message = message.replace(repr(item), repr(text)).replace(item, text)
    return message


def refuse(cfg: Config) -> None:
    """Every concern in turn; the first refusal raises (the user's most basic mistake first)."""
    for concern in (values, names, losses, data, compile_options, cuda_graph, deepspeed):
        concern(cfg)
