"""Ending a finished training process without CPython's teardown of torch and Lightning.

A process that imported torch and Lightning spends about a second after its last line tearing
its modules down (`Py_FinalizeEx` clears several thousand module namespaces and collects what
they held), and kfp.local starts the next task only once the process is gone. The handler
here is registered before torch and Lightning are imported (`errors.py`, which every component
shim imports first, imports this module), so it runs after their exit handlers. Once
`exit_without_teardown` has been called and the process ends normally (no uncaught exception,
no child process left to join), it flushes what the teardown would flush and ends the process
with status 0.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys

_armed = False


def exit_without_teardown() -> None:
    """Asks for the process to end without the interpreter's teardown when it ends normally.

    Call it once the task's work is done and its files are written and closed. What runs after
    it (the KFP executor writing the task's outputs) still runs; if that raises, the process
    ends the usual way, with its traceback and status 1.
    """
    global _armed
    _armed = True


def disarm() -> None:
    """Lets the process end the usual way after all (`run_or_exit` on a failure: its status)."""
    global _armed
    _armed = False


@atexit.register
def _end_now() -> None:
    # `sys.last_exc` (3.12) or `sys.last_value` is set when an uncaught exception ended the
    # program (Python/pythonrun.c, `_PyErr_PrintEx`): its status must stay 1.
    failed = hasattr(sys, "last_exc") or hasattr(sys, "last_value")
    if not _armed or failed or multiprocessing.active_children():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to flush
            stream.flush()
    os._exit(0)
