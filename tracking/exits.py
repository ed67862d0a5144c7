"""Ending what a process left open (runs, deployments) while the process can still write.

Python calls ``atexit`` functions only after ``threading`` has shut the thread pools down, and
``concurrent.futures`` refuses new work from then on: a final write that needs a pool fails
there (s3fs resolves hosts and opens connections through one, so an embedded lake whose objects
are on S3 could not flush a run left open). A hook registered here is called earlier, from
``threading``'s own exit list, which runs before those pools shut down (the list is CPython's,
``threading._register_atexit``; where it is missing, only ``atexit`` calls the hook).

The hook is registered with ``atexit`` too, by attribute, so that code which collects a job's
``atexit`` functions to call when the job ends (a warm Ray worker does not exit: see
``compute.backends.ray_attempt``) still finds it. A hook called once is unregistered from both.

Two things keep the early call as safe as ``atexit`` was:

- ``threading``'s exit list runs before Python joins the threads the program left running, so
  the hooks first wait for those threads (a thread still logging to a run must finish before the
  run ends, as it did under ``atexit``); only the thread pools' own workers are not waited for,
  as they stop only once their exit hooks, which follow ours, have run.
- A forked child inherits the list, and ``multiprocessing`` children call it when they finish
  (``atexit`` they skip): a child forgets the parent's hooks at the fork, so it never ends the
  parent's runs or deployments.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  # its exit hook must be registered before ours
import os
import sys
import threading
import traceback
from collections.abc import Callable

_lock = threading.Lock()
#: Hooks in registration order (called newest first, as ``atexit`` does). A list compared with
#: ``==``, as ``atexit`` compares: a bound method is a new object at each attribute access.
_hooks: list[Callable[[], object]] = []
_installed = False


#: The exception the main thread died of, when nothing caught it (see :func:`uncaught`).
_uncaught: list[BaseException] = []


def register(hook: Callable[[], object]) -> None:
    """Call ``hook`` once when the interpreter exits (unless :func:`unregister`-ed first)."""
    global _installed
    with _lock:
        _hooks.append(hook)
        if not _installed:
            _installed = _install()
            _watch_uncaught()
    atexit.register(hook)


def uncaught() -> BaseException | None:
    """The exception the process is exiting with, when its main thread raised one that nothing
    caught (seen by ``sys.excepthook``, watched from the first :func:`register`); else None.

    A hook uses it to end a run left open as failed (or killed, on ``KeyboardInterrupt``)
    rather than finished. An exception an interactive shell reports (IPython, the REPL) is not
    the process's end and is not seen; neither is one when the program replaced
    ``sys.excepthook`` after the first run started.
    """
    return _uncaught[-1] if _uncaught else None


def note_uncaught(exc: BaseException) -> None:
    """Have :func:`uncaught` say ``exc``: the code a job runner ran raised it, and the runner
    caught it where, run as a program, it would have ended the process (see
    :mod:`compute.runner`); the hooks then end what that code left open as failed."""
    _uncaught.append(exc)


def forget_uncaught() -> None:
    """Forget what :func:`note_uncaught` said, once the hooks it was for have run (a warm Ray
    worker goes on to run the next job)."""
    _uncaught.clear()


def _watch_uncaught() -> None:
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        if not getattr(sys, "ps1", None):  # the REPL reports and goes on: not the end
            _uncaught.append(value)
        previous(kind, value, tb)  # type: ignore[arg-type]

    sys.excepthook = excepthook


def unregister(hook: Callable[[], object]) -> None:
    """Forget ``hook`` (every registration of it, as ``atexit.unregister`` does)."""
    with _lock:
        _hooks[:] = [h for h in _hooks if h != hook]
    atexit.unregister(hook)


def _forget_in_child() -> None:
    """After a fork, in the child: the runs and deployments open are the parent's, not ours."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    hooks = _hooks[:]
    _hooks.clear()
    for hook in hooks:
        atexit.unregister(hook)


os.register_at_fork(after_in_child=_forget_in_child)


def _is_pool_thread(thread: threading.Thread) -> bool:
    """Whether ``thread`` belongs to a ``concurrent.futures`` executor: it stops only when the
    executor's exit hook (called after ours) tells it to, so waiting for it would never end."""
    target = getattr(thread, "_target", None)
    modules = (type(thread).__module__, getattr(target, "__module__", None) or "")
    return any(module.startswith("concurrent.futures") for module in modules)


def _wait_for_program_threads() -> None:
    current = threading.current_thread()
    for thread in threading.enumerate():
        if (
            thread is current
            or thread is threading.main_thread()
            or thread.daemon
            or _is_pool_thread(thread)
        ):
            continue
        thread.join()


def _install() -> bool:
    register_early = getattr(threading, "_register_atexit", None)
    if register_early is None:
        return False
    try:
        register_early(_call_all)
    except RuntimeError:  # the interpreter is shutting down already: atexit alone calls them
        return False
    return True


def _call_all() -> None:
    if not _hooks:
        return
    _wait_for_program_threads()
    with _lock:
        hooks = _hooks[::-1]
        _hooks.clear()
    for hook in hooks:
        atexit.unregister(hook)
        try:
            hook()
        except Exception:
            print(f"Exception ignored in flowlake's exit hook {hook!r}:", file=sys.stderr)
            traceback.print_exc()
