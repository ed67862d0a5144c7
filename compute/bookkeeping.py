"""The submitter's background writer: a job's bookkeeping, written after its task was sent.

A backend that sends a job before writing it (:class:`compute.backends.SendsEarly`) hands the
job's bookkeeping (its folder, payload, status, log and spec) to one thread per process, so that
``submit`` returns as soon as the task is on its way. The writes happen in submission order;
every call on a job that reads its state waits for that job's bookkeeping first (and raises what
it raised), :func:`flush` waits for all of it (listing jobs in this process calls it), and
the interpreter waits for the writer on its way out, before its ``atexit`` functions run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

_lock = threading.Lock()
_pool: list[ThreadPoolExecutor] = []


def _writer() -> ThreadPoolExecutor:
    """This process's writer: one thread, so writes happen in the order they were handed over.
    A ``ThreadPoolExecutor``'s queue is drained when the interpreter exits (before ``atexit``
    functions run, such as the Ray watcher's)."""
    with _lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(1, thread_name_prefix="flowlake-bookkeeping"))
        return _pool[0]


def _forget_after_fork() -> None:
    """A forked child has no writer thread: it starts its own when it needs one."""
    _pool.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def write_later(work: Callable[[], None]) -> Future[None]:
    """Run ``work`` on the writer thread, after everything handed over before it.

    Returns:
        A future that is done once ``work`` returned; its ``result()`` raises what ``work``
        raised.
    """
    return _writer().submit(work)


def flush() -> None:
    """Wait until everything handed to the writer so far is written (failures are raised from
    the calls on their own jobs, not here)."""
    with _lock:
        pool = _pool[0] if _pool else None
    if pool is None:
        return
    try:
        pool.submit(lambda: None).result()
    except RuntimeError:  # the interpreter is exiting: the writer drains its queue anyway
        return


def settled() -> Future[None]:
    """A future that is already done (a job whose bookkeeping was written before sending)."""
    done: Future[None] = Future()
    done.set_result(None)
    return done
