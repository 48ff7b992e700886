"""One process of a gloo job that exits while gloo's worker thread still has to run Python: the last collective's
tensor is freed by that thread, and a finaliser on it sleeps (0.5 s) across the moment the interpreter starts to
finalise (a module global whose __del__ sleeps 2 s keeps finalisation open). `plain` leaves with sys.exit, as train.py
used to; otherwise with trainer.accel.shutdown.exit_process. Before it goes it starts a non-daemon thread and
registers an atexit handler, whose lines must still be printed. Run by tests/test_distributed.py under torchrun."""

import atexit
import sys
import threading
import time
import weakref

import torch
import torch.distributed as dist

from trainer.accel.shutdown import exit_process


class Lingering:
    def __del__(self) -> None:
        time.sleep(2.0)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    lingering = Lingering()
    tensor = torch.ones(4)
    weakref.finalize(tensor, time.sleep, 0.5)
    work = dist.all_reduce(tensor, async_op=True)
    del tensor, work  # the worker thread now holds the tensor's last reference
    atexit.register(lambda: print(f"rank {rank}: atexit ran", flush=True))
    threading.Thread(target=lambda: (time.sleep(0.2), print(f"rank {rank}: thread finished", flush=True))).start()
    time.sleep(0.05)
    if sys.argv[1] == "plain":
        sys.exit(int(sys.argv[2]))
    exit_process(int(sys.argv[2]))
