"""How an entry point's process ends when it was one process of a launched job (no torch import: cheap to reach)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Ends an entry point's process with `code`; in a launched job (WORLD_SIZE set), without interpreter finalisation.

    A gloo worker thread frees the last collective's tensors after it has woken the caller; when that release comes
    while the interpreter finalises, the thread needs the GIL, CPython 3.11 ends it with pthread_exit, and the unwind
    through gloo's noexcept frames aborts a process that finished well (SIGABRT, "terminate called without an active
    exception"; a core dump here: ProcessGroupGloo::runLoop -> ~AsyncAllgatherWork -> THPVariable_dealloc ->
    take_gil -> PyThread_exit_thread). Destroying the group does not join those threads while DDP holds it. So the
    process does what finalisation would have done for it (waits for its Python threads, runs the atexit handlers:
    W&B, logging; flushes stdout and stderr) and leaves with os._exit, before any native thread can meet a dying
    interpreter. Outside a launcher it exits as usual."""
    if not os.environ.get("WORLD_SIZE"):
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # CPython's own atexit pass; os._exit skips it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)
