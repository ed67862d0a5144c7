"""Processes on this host: whether one is alive, and when it started.

A process id alone does not name a process: once it exits, its id can be given to a new one.
A record of a process therefore keeps its start (:func:`start_token`, :func:`start_time`) with
its id, and a process holding the id that started later is not the recorded one.

Standard library only, and nothing else from the store: the supervisor of a queued job
(``compute``) checks processes without loading the store, tracking or DuckDB.
"""

from __future__ import annotations

import os


def hostname() -> str:
    """This host's name, as ``socket.gethostname()`` gives it (without importing ``socket``,
    which a job's supervisor would load for this alone)."""
    return os.uname().nodename


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (ids <= 0: False).

    Where ``/proc`` cannot be read, a process that exists counts as alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user; /proc still tells a zombie apart
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")


def start_token(pid: int) -> str | None:
    """The process's start in clock ticks since boot, as text (None: no such process, or no
    ``/proc``): a different token for the same ``pid`` means the id was reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def start_time(pid: int) -> float | None:
    """When process ``pid`` started, in unix seconds (clock-tick resolution), or None when it
    cannot be read (no such process, or no ``/proc``)."""
    token = start_token(pid)
    if token is None:
        return None
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(token) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may itself hold ')'), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
