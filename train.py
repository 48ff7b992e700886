"""Entry point: `accelerate launch train.py [--config configs/X.yaml] [key=value ...]`."""

import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
