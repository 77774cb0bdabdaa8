"""Errors a user can fix, and the one place they become a one-line message and an exit status.

Every check of user input raises `UserInputError` naming the parameter, the value and what is
accepted. Entry points (the pipeline CLI and each component shim) call `run_or_exit`, so a bad
value ends the process with that single line on stderr and exit status 2 instead of a traceback,
whether it came from the command line or from the Kubeflow run form.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserInputError(ValueError):
    """A value supplied by the user (parameter, URL, file) that cannot be used as given."""


class RunError(RuntimeError):
    """A step failed for a reason other than a parameter value (network, data, a failed task)."""


class DownloadError(RunError):
    """Every mirror failed for a file; the message lists each mirror's failure."""


def invalid(parameter: str, value: object, accepted: str) -> UserInputError:
    """Builds the uniform one-line message for a rejected parameter value.

    Args:
        parameter: Name of the parameter as the user typed it (run form or CLI).
        value: The rejected value.
        accepted: What would have been accepted, in words.

    Returns:
        The error, ready to raise.
    """
    return UserInputError(f"invalid {parameter}={value!r}: expected {accepted}")


def run_or_exit(func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """Calls `func`, turning user-fixable errors into a one-line message and a non-zero exit.

    Args:
        func: The typed entry function of a component or CLI.
        *args: Positional arguments for `func`.
        **kwargs: Keyword arguments for `func`.

    Returns:
        Whatever `func` returns.

    Raises:
        SystemExit: With status 2 for a `UserInputError`, 1 for a `RunError`.
    """
    try:
        return func(*args, **kwargs)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except RunError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
