"""Whether a run recorded as ``running`` still is: the status a reader should show.

A process killed with SIGKILL cannot record anything, so its run keeps ``status = running``.
Readers tell the cases apart: on the run's own host a dead process id means ``killed``;
anywhere, a heartbeat older than :data:`STALE_AFTER` heartbeat intervals means ``stale``.
"""

from __future__ import annotations

import socket
from datetime import datetime

from store.processes import pid_alive

#: A running run whose heartbeat is older than this many intervals shows as stale.
STALE_AFTER = 3.0


def effective_status(
    recorded: str,
    host: str | None,
    pid: int | None,
    heartbeat: datetime | None,
    heartbeat_interval: float | None,
    now: datetime,
) -> str:
    """``recorded`` unless it is ``running``; then ``running``, ``killed`` or ``stale``."""
    if recorded != "running":
        return recorded
    if host == socket.gethostname() and pid is not None and not pid_alive(pid):
        return "killed"
    if heartbeat is None or heartbeat_interval is None:
        return "stale"
    if (now - heartbeat).total_seconds() > STALE_AFTER * heartbeat_interval:
        return "stale"
    return "running"
