"""A preloaded fork server that starts the local backend's job supervisors.

A supervisor started as ``python -P -m compute.supervise`` pays for an interpreter and its
imports before the job's first line, which is most of a local job's launch. The fork server is
that interpreter with :mod:`compute.supervise`, :mod:`compute.runner` and cloudpickle loaded
once: a submit sends it the job's folder, the submitter's environment, working folder and
umask over a Unix socket, and it forks a child that takes them on and runs the supervisor, as
the detached process would. The server runs no threads, so forking it is safe.

One server serves every submitter of this user that runs the same interpreter and flowlake
code: the socket's name is a hash of the interpreter, the ``PYTHON*``, ``HOME`` and locale
variables (they shape an interpreter at start-up, which a forked child cannot redo) and the
modification times of the compute package's and the store's preloaded files, so a changed
flowlake or another virtual environment gets a server of its own. The first submit finds none,
starts one in the background and launches its own supervisor as a fresh process. A server
exits after :data:`IDLE_S` seconds without a request. ``FLOWLAKE_FORKSERVER=0`` turns it off.

Only this user can reach it: the socket's folder is the user's own (mode 0700), the socket is
mode 0600, and the server checks each caller's uid (``SO_PEERCRED``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from compute.errors import ComputeError
from compute.forked import redirect_to_log, run_then_exit
from compute.machine import Capacity

#: Seconds a server waits for a request before it exits.
IDLE_S = 120.0
#: Seconds a submitter waits for the server to say it forked the supervisor.
REPLY_TIMEOUT_S = 10.0
#: Set to ``0`` to start every supervisor as a fresh interpreter.
VARIABLE = "FLOWLAKE_FORKSERVER"
_PEERCRED = struct.Struct("3i")
#: Variables besides ``PYTHON*`` that an interpreter reads once, at start-up.
START_VARIABLES = ("HOME", "LANG", "LC_ALL", "LC_CTYPE")


def enabled() -> bool:
    """Whether submits use the fork server (``FLOWLAKE_FORKSERVER`` is not ``0``)."""
    return os.environ.get(VARIABLE, "1") != "0"


def socket_dir() -> Path | None:
    """This user's folder for fork server sockets (created mode 0700), or None when the folder
    exists but is not this user's own (then no server is used)."""
    path = Path(tempfile.gettempdir()) / f"flowlake-forkserver-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not path.is_dir():
        return None
    return path


def _preloaded_files() -> list[Path]:
    import compute
    import store

    package = Path(compute.__file__).parent
    files = sorted(package.glob("*.py")) + sorted((package / "backends").glob("*.py"))
    root = Path(store.__file__).parent
    return [*files, *(root / name for name in ("__init__.py", "errors.py", "processes.py"))]


def server_key() -> str:
    """What a server must share with a submitter to start its supervisors (see the module)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PYTHON") or k in START_VARIABLES}
    stamps = []
    for f in _preloaded_files():
        with contextlib.suppress(OSError):
            stamps.append((str(f), f.stat().st_mtime_ns))
    text = json.dumps([sys.executable, sys.version, sorted(env.items()), stamps])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def launch(job_dir: Path, capacity: Capacity) -> int | None:
    """Have this user's fork server start the supervisor of the job in ``job_dir``; returns the
    supervisor's pid, or None when no server took the job (none runs yet, or it is turned off:
    the caller starts the supervisor itself; a server is started for the next submits).

    Raises:
        ComputeError: the server took the request but never said whether it started the job.
    """
    if not enabled():
        return None
    folder = socket_dir()
    if folder is None:
        return None
    address = folder / f"{server_key()}.sock"
    request = {
        "job_dir": str(job_dir),
        "capacity": capacity.to_json(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": _umask(),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            conn.connect(str(address))
        except OSError:  # no server (or a dead one's socket): start one for the next submits
            _start_server(address)
            return None
        try:
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = _read_line(conn)
        except OSError as exc:
            raise ComputeError(
                f"the local fork server took the job but did not answer: {exc}"
            ) from exc
    if not reply:  # closed without forking (it was exiting): nothing was started
        return None
    return int(json.loads(reply)["pid"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.strip()


def _start_server(address: Path) -> None:
    with open(address.with_suffix(".log"), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-P", "-m", "compute.backends.local_forkserver", str(address)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )


def serve(address: Path) -> None:
    """Serve supervisor starts on ``address`` until :data:`IDLE_S` seconds pass idle."""
    # Loaded once here rather than in every job.
    import cloudpickle  # noqa: F401

    import compute.runner  # noqa: F401
    import compute.supervise  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe:
            probe.connect(str(address))
            return  # another server answers there already
    with contextlib.suppress(FileNotFoundError):
        address.unlink()
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(address))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    bound = address.stat().st_ino
    # Supervisors are this server's children: the kernel reaps them when they end.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener.settimeout(IDLE_S)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            _serve_one(listener, conn)
        # Idle: new submitters must no longer find the socket; those already queued on it
        # are still served.
        with contextlib.suppress(OSError):
            if address.stat().st_ino == bound:
                address.unlink()
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, OSError):
                break
            conn.setblocking(True)
            _serve_one(listener, conn)
    finally:
        listener.close()


def _serve_one(listener: socket.socket, conn: socket.socket) -> None:
    with conn:
        _, uid, _ = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != os.getuid():
            return
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            request: dict[str, Any] = json.loads(_read_line(conn))
        except (OSError, ValueError):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.close()
            _run_supervisor(request)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _run_supervisor(request: dict[str, Any]) -> NoReturn:
    """In the forked child: become the submitter's detached supervisor; never returns."""

    def supervisor() -> int:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its attempts
        os.setsid()
        os.umask(int(request["umask"]))
        job_dir = Path(request["job_dir"])
        log = os.open(job_dir / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        redirect_to_log(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # computed again from the submitter's TMPDIR when asked
        from compute.model import JobStatus
        from compute.supervise import supervise

        capacity = Capacity.from_json(request["capacity"])
        final = supervise(str(job_dir), fork=True, capacity=capacity)
        return 0 if final.status == JobStatus.SUCCEEDED.value else 1

    run_then_exit(supervisor)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
