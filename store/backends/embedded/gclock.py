"""The lock that keeps gc's deletions and the lake's writers apart, across processes.

A write (storing objects, then staging or committing what references them) holds the lock
*shared* from its first object to the transaction that references it; gc holds it *exclusive*
while it re-checks what is reachable and deletes. So gc never sees a write half done: every
object a writer has stored or deduplicated against is either referenced by the time gc looks,
or gc deletes it first and the writer, starting after gc, stores it again. Writers do not block
one another.

The lock is ``flock(2)`` on two files in the lake folder; the kernel releases it when a process
dies, so a killed writer or gc never leaves the lake locked. ``gc.lock.gate`` is a turnstile:
gc holds it while it waits for the in-flight writes to finish, so a steady stream of new writes
cannot starve it; new writers wait at the gate only while gc deletes (or waits, a bounded time).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_FILE = "gc.lock"
GATE_FILE = "gc.lock.gate"
#: gc keeps new writers out for at most this long while it waits for in-flight writes; then it
#: lets them through for a moment and tries again (a long upload must not stall every writer).
GATE_WAIT_S = 2.0
_POLL_S = 0.01

# A forked child inherits the descriptors of the writes in flight in its parent, and an flock
# lasts while any copy is open, so a long-lived child (a data loader worker) would hold the
# parent's shared lock and keep gc out. The child closes its copies (never unlocks: the lock
# is the parent's). This set is process state by nature, like the descriptors themselves.
_LOCKS: weakref.WeakSet[GcLock] = weakref.WeakSet()


def _close_inherited() -> None:
    for lock in list(_LOCKS):
        lock._close_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


class GcLock:
    """Shared for writers, exclusive for gc; reentrant per thread for writers.

    ``writing()`` and ``collecting()`` block until granted. A thread that holds ``writing()``
    may enter it again (nested backend calls) without touching the files again.
    """

    def __init__(self, directory: str) -> None:
        self._lock_path = os.path.join(directory, LOCK_FILE)
        self._gate_path = os.path.join(directory, GATE_FILE)
        self._held = threading.local()
        self._open_fds: set[int] = set()
        _LOCKS.add(self)

    def _close_inherited(self) -> None:
        for fd in list(self._open_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open_fds.clear()

    def _open(self, path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._open_fds.add(fd)
        return fd

    def _close(self, fd: int) -> None:
        self._open_fds.discard(fd)
        os.close(fd)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock shared for one write operation (blocks while gc deletes)."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        gate = self._open(self._gate_path)
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)  # brief among writers; waits while gc holds it
            lock = self._open(self._lock_path)
            try:
                fcntl.flock(lock, fcntl.LOCK_SH)
            except BaseException:
                self._close(lock)
                raise
        finally:
            self._close(gate)
        self._held.depth = 1
        try:
            yield
        finally:
            self._held.depth = 0
            self._close(lock)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Hold the lock exclusive: no write operation is in flight while inside."""
        if getattr(self._held, "depth", 0):
            raise RuntimeError("gc cannot run inside a write operation of the same thread")
        while True:
            gate = self._open(self._gate_path)
            lock = self._open(self._lock_path)
            try:
                fcntl.flock(gate, fcntl.LOCK_EX)
                if _poll_exclusive(lock, GATE_WAIT_S):
                    try:
                        yield
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
                    return
            finally:
                self._close(lock)
                self._close(gate)
            time.sleep(GATE_WAIT_S / 4)  # let the writers that queued at the gate through


def _poll_exclusive(fd: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
