"""`python -m trainer.bench [--config FILE] [key=value ...]`: see trainer.bench.race."""

import sys

from trainer.bench.race import main

sys.exit(main())
