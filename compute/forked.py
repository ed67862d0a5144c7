"""A child forked from a running interpreter: its standard streams, and its way out.

The fork server forks a submitter's supervisor, and a supervisor forks each attempt, from
interpreters that have the job machinery imported already (which is what makes them fast).
Such a child inherits its parent's descriptors and ``sys.stdout``/``sys.stderr`` objects, and
a return or an exception would carry it on into its parent's code: it points its streams at
its own log (:func:`redirect_to_log`) and ends through :func:`run_then_exit`. Standard library
only: both parents import this before any job code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def redirect_to_log(log_fd: int) -> None:
    """Make ``log_fd`` this process's stdout and stderr and ``/dev/null`` its stdin.

    ``log_fd`` is closed (its duplicates 1 and 2 stay). ``sys.stdout`` and ``sys.stderr`` are
    new text streams over descriptors 1 and 2, unbuffered as ``PYTHONUNBUFFERED`` makes a fresh
    interpreter's, writing characters the encoding lacks as backslash escapes (a log line
    never fails to print).

    Raises:
        OSError: ``log_fd`` is not an open descriptor, or ``/dev/null`` cannot be opened.
    """
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), write_through=True, errors="backslashreplace"
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
    )


def run_then_exit(body: Callable[[], int]) -> NoReturn:
    """Run ``body`` and end this process with its exit status; never returns.

    ``SystemExit`` gives its integer code (any other: 1); any other exception is printed to
    stderr and gives 1. Python's own way out (``atexit`` functions, waiting for threads) is
    skipped, as the parent's must not run twice; ``body`` does what of it the child needs.
    """
    code = 1
    try:
        code = body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the child must never return into its parent's code
        with contextlib.suppress(BaseException):
            import traceback  # only on this path: a job's attempt starts without it

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
