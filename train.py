"""Entry point: `accelerate launch train.py [--config configs/X.yaml] [key=value ...]`."""

from trainer.accel.shutdown import exit_process
from trainer.cli import main

if __name__ == "__main__":
    exit_process(main())
