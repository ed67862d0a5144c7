"""Whether a process is alive, a token that tells a reused process id apart, the host's name.

The same check as :func:`tracking.liveness.pid_alive`, kept here because the supervisor of a
queued job must stay light: importing ``tracking`` would load DuckDB into every waiting job.
"""

from __future__ import annotations

import os


def hostname() -> str:
    """This host's name, as ``socket.gethostname()`` gives it (without importing ``socket``,
    which a job's supervisor would load for this alone)."""
    return os.uname().nodename


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _stat_fields(pid)
    return state is None or state[0] not in ("Z", "X")


def start_token(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: changes when ``pid`` is reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may itself hold ')'), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None
