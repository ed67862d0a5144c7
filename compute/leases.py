"""Machine-wide resource leases, so that no two jobs share a GPU and nothing is oversubscribed.

Every process that runs a job on this machine, whoever submitted it, takes its lease from one
ledger (``leases.json``) under one file lock (``flock``). A lease names the process holding
it; a lease whose process is gone (killed with SIGKILL, say) is dropped by the next reader, so
a dead job never holds resources. Waiting jobs are listed too: a job is granted resources only
when no older waiting job would fit in them (older jobs first; smaller ones fill the gaps
bigger ones cannot use).

The ledger lives in ``FLOWLAKE_LEASE_DIR``, else ``<temp dir>/flowlake-leases-<uid>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.machine import Capacity
from compute.model import Resources
from compute.state import write_atomic
from store.processes import pid_alive, start_token

POLL_INTERVAL_S = 0.05
MAX_POLL_INTERVAL_S = 0.5


def lease_dir() -> Path:
    """The folder of this machine's ledger (created when absent)."""
    override = os.environ.get("FLOWLAKE_LEASE_DIR")
    if override:
        path = Path(override)
    else:
        import tempfile

        path = Path(tempfile.gettempdir()) / f"flowlake-leases-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Lease:
    """Resources granted to one job.

    Attributes:
        job_id: the job.
        pid: the process holding the lease; the lease ends when it does.
        gpus: the device ids granted.
        cpus: cores.
        memory: bytes.
    """

    job_id: str
    pid: int
    gpus: tuple[int, ...]
    cpus: float
    memory: int


def _alive(entry: dict[str, Any]) -> bool:
    return pid_alive(entry["pid"]) and start_token(entry["pid"]) == entry.get("start")


class Ledger:
    """The machine's lease ledger. Building one does no I/O."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or lease_dir()
        self._file = self.directory / "leases.json"
        self._lock_file = self.directory / "leases.lock"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold the ledger's lock; the kernel drops it if this process dies, SIGKILL included.

        ``fcntl.flock`` rather than ``filelock``: a job's supervisor takes this lock on the way
        to the job's first line, and importing filelock costs it about 20 ms, most of the rest
        of its start-up. Each use opens its own descriptor, so threads exclude each other too.
        """
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        try:
            data: dict[str, list[dict[str, Any]]] = json.loads(self._file.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        return {
            "leases": [e for e in data.get("leases", []) if _alive(e)],
            "waiting": [e for e in data.get("waiting", []) if _alive(e)],
        }

    def _write(self, data: dict[str, list[dict[str, Any]]]) -> None:
        write_atomic(self._file, json.dumps(data).encode())

    def held(self) -> list[Lease]:
        """The leases of live processes."""
        with self._lock():
            data = self._read()
        return [
            Lease(e["job_id"], e["pid"], tuple(e["gpus"]), e["cpus"], e["memory"])
            for e in data["leases"]
        ]

    def acquire(
        self,
        job_id: str,
        resources: Resources,
        capacity: Capacity,
        *,
        pid: int | None = None,
        should_stop: Any = None,
    ) -> Lease | None:
        """Wait until ``resources`` fit, then take them. Returns None when ``should_stop()``
        turned true while waiting (the job was cancelled)."""
        me = {
            "job_id": job_id,
            "pid": pid or os.getpid(),
            "start": start_token(pid or os.getpid()),
            "since": time.time(),
            "gpus": resources.gpus,
            "cpus": resources.cpus,
            "memory": resources.memory_bytes,
        }
        delay = POLL_INTERVAL_S
        try:
            while True:
                lease = self._try(me, capacity)
                if lease is not None:
                    return lease
                if should_stop is not None and should_stop():
                    return None
                time.sleep(delay)
                # A long queue of waiters must not keep the machine busy reading the ledger.
                delay = min(delay * 1.5, MAX_POLL_INTERVAL_S)
        except BaseException:
            self._forget(job_id)
            raise

    def _try(self, me: dict[str, Any], capacity: Capacity) -> Lease | None:
        with self._lock():
            data = self._read()
            waiting = [w for w in data["waiting"] if w["job_id"] != me["job_id"]]
            free_gpus = [
                g for g in capacity.gpus if all(g not in e["gpus"] for e in data["leases"])
            ]
            free_cpus = capacity.cpus - sum(e["cpus"] for e in data["leases"])
            free_memory = capacity.memory - sum(e["memory"] for e in data["leases"])

            def fits(request: dict[str, Any]) -> bool:
                return (
                    request["gpus"] <= len(free_gpus)
                    and request["cpus"] <= free_cpus + 1e-9
                    # A machine of unknown memory (0) does not limit it, as the submit
                    # check does not: else a job reserving some would wait forever.
                    and (
                        request["memory"] == 0
                        or capacity.memory == 0
                        or request["memory"] <= free_memory
                    )
                )

            older_fits = any(w["since"] < me["since"] and fits(w) for w in waiting)
            if not fits(me) or older_fits:
                data["waiting"] = [*waiting, me]
                self._write(data)
                return None
            granted = {**me, "gpus": free_gpus[: me["gpus"]]}
            data["waiting"] = waiting
            data["leases"].append(granted)
            self._write(data)
        return Lease(me["job_id"], me["pid"], tuple(granted["gpus"]), me["cpus"], me["memory"])

    def _forget(self, job_id: str) -> None:
        with self._lock():
            data = self._read()
            data["waiting"] = [w for w in data["waiting"] if w["job_id"] != job_id]
            data["leases"] = [e for e in data["leases"] if e["job_id"] != job_id]
            self._write(data)

    def release(self, job_id: str) -> None:
        """End the lease of ``job_id`` (nothing happens when it holds none)."""
        self._forget(job_id)
