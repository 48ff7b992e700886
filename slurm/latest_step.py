"""Prints the step of the newest complete checkpoint of the run that train.py's arguments describe (0: none yet).

slurm/run.sh calls it before and after the training step, to tell a run that saved progress from one that did not.
It only resolves run.dir (schema <- --config file <- overrides) and lists its checkpoints, in well under a second:
no torch import, no validation (train.py itself reports a bad config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.config import Config  # noqa: E402  (imports omegaconf only)

PREFIX, STATE_FILE = "step-", "trainer_state.json"  # as trainer.run.checkpoint writes them


def latest_step(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    args, rest = parser.parse_known_args(argv)
    cfg = OmegaConf.structured(Config)
    if args.config:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config))
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item for item in rest if "=" in item]))
    folder = Path(cfg.run.dir) / "checkpoints"
    steps = [int(p.name[len(PREFIX) :]) for p in folder.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()]
    return max(steps, default=0)


if __name__ == "__main__":
    try:
        print(latest_step(sys.argv[1:]))
    except Exception as err:  # noqa: BLE001 - train.py explains a bad config; here it only means "unknown"
        print(f"slurm/latest_step.py: {type(err).__name__}: {err}", file=sys.stderr)
        print(-1)
