"""Errors a user can fix, and the one place they become a one-line message and an exit status.

Every check of user input raises `UserInputError` naming the parameter, the value and what is
accepted. Entry points (the pipeline CLI and each component shim) call `run_or_exit`, so a bad
value ends the process with that single line on stderr and exit status 2 instead of a traceback,
whether it came from the command line or from the Kubeflow run form.

It also ends a finished training process without CPython's teardown of torch and Lightning.
A process that imported torch and Lightning spends about a second after its last line tearing
its modules down (`Py_FinalizeEx` clears several thousand module namespaces and collects what
they held), and kfp.local starts the next task only once the process is gone. The handler
here is registered before torch and Lightning are imported (every component shim imports this
module first), so it runs after their exit handlers. Once `exit_without_teardown` has been
called and the process ends normally (no uncaught exception, no child process left to join),
it flushes what the teardown would flush and ends the process with status 0.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2
# What starts the one line a failing process ends with (also read back from torchrun's ranks).
ERROR_PREFIX = "error: "

# Faults of the machine a write can meet, in the words a one-line message uses. (Not the
# network's: a mirror or an API server failing has messages of its own.)
WRITE_FAULT_CAUSES: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOMEM: "out of memory",
}


_armed = False


def exit_without_teardown() -> None:
    """Asks for the process to end without the interpreter's teardown when it ends normally.

    Call it once the task's work is done and its files are written and closed. What runs after
    it (the KFP executor writing the task's outputs) still runs; if that raises, the process
    ends the usual way, with its traceback and status 1.
    """
    global _armed
    _armed = True


# Registered when this module is first imported, which every component shim does before it
# imports torch and Lightning: atexit runs it after their handlers.
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


class UserInputError(ValueError):
    """A value supplied by the user (parameter, URL, file) that cannot be used as given."""


class RunError(RuntimeError):
    """A step failed for a reason other than a parameter value (network, data, a failed task)."""


class DownloadError(RunError):
    """Every mirror failed for a file; the message lists each mirror's failure."""


class WriteError(RunError):
    """A file or folder could not be written (no space, read-only, no permission, I/O error).

    The message names the path that could not be written and the cause, on one line.

    Attributes:
        path: What could not be written, as the user knows it (never a temporary name).
        cause: The cause in words, e.g. "no space left on device".
        detail: What the system said, on one line (may be empty).
    """

    def __init__(self, path: object, cause: str, detail: str = "") -> None:
        self.path, self.cause, self.detail = str(path), cause, detail
        super().__init__(f"{cause} writing {path}" + (f": {detail}" if detail else ""))


def invalid(parameter: str, value: object, accepted: str) -> UserInputError:
    """Builds the uniform one-line message for a rejected parameter value.

    Args:
        parameter: Name of the parameter as the user typed it (run form or CLI).
        value: The rejected value.
        accepted: What would have been accepted, in words.

    Returns:
        The error, ready to raise.
    """
    # Objects and lists are typed as JSON (run form, CLI): shown as typed, not as Python.
    shown = json.dumps(value, default=repr) if isinstance(value, (dict, list)) else repr(value)
    return UserInputError(f"invalid {parameter}={shown}: expected {accepted}")


def _fail(message: str, status: int) -> NoReturn:
    # Failed after all: the exit status must survive, so the process ends the usual way.
    global _armed
    _armed = False
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr, flush=True)
    raise SystemExit(status) from None


def run_or_exit(func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """Calls `func`, turning user-fixable errors into a one-line message and a non-zero exit.

    Args:
        func: The typed entry function of a component or CLI.
        *args: Positional arguments for `func`.
        **kwargs: Keyword arguments for `func`.

    Returns:
        Whatever `func` returns.

    Raises:
        SystemExit: With status 2 for a `UserInputError`, 1 for a `RunError` or an `OSError`
            that is a fault of the machine (`WRITE_FAULT_CAUSES`: a full disk, a read-only
            file system...).
    """
    thread_faults: list[threading.ExceptHookArgs] = []
    previous_hook = threading.excepthook

    def quiet_thread_faults(hook_args: threading.ExceptHookArgs) -> None:
        # A writer's thread that dies of a full disk (TensorBoard's event writer) hands the
        # error to its owner, which fails with it here: its traceback, printed by the thread
        # at the same moment, would bury the one line that says what happened.
        fault = hook_args.exc_value
        if isinstance(fault, OSError) and fault.errno in WRITE_FAULT_CAUSES:
            thread_faults.append(hook_args)
        else:
            previous_hook(hook_args)

    threading.excepthook = quiet_thread_faults
    try:
        result = func(*args, **kwargs)
    except UserInputError as err:
        _fail(str(err), EXIT_USER_ERROR)
    except RunError as err:
        _fail(str(err), 1)
    except OSError as err:
        # A fault of the machine that no writer of ours translated (they raise `WriteError`
        # naming what they wrote): still one line, naming the file the system named.
        cause = WRITE_FAULT_CAUSES.get(err.errno or 0)
        if cause is None:
            raise
        _fail(cause + (f": {err.filename}" if err.filename is not None else ""), 1)
    finally:
        threading.excepthook = previous_hook
    for hook_args in thread_faults:
        # Its owner went on without it: say so, briefly.
        name = hook_args.thread.name if hook_args.thread is not None else "a thread"
        print(f"warning: {name} stopped: {hook_args.exc_value}", file=sys.stderr, flush=True)
    return result
