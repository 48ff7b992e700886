"""`python -m trainer.bench [--config FILE] [key=value ...]`: see trainer.bench.race."""

from trainer.accel.shutdown import exit_process
from trainer.bench.race import main

exit_process(main())
