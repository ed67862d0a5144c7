"""The Ray worker's side of a job: one attempt run inside a warm Ray worker, and job environments.

An attempt is the same :func:`compute.runner.main` as on the local backend, called in the Ray
worker process itself rather than in a fresh interpreter, so a job whose worker has run a job
before starts with flowlake, the lake's backend and the job's heavy imports already loaded. Ray
isolates the job from its submitter; what one job leaves in the worker is undone before the
next: its ``sys.path``, working folder, environment variables, ``sys.argv`` and every module
imported from its code snapshot (so the next job runs its own snapshot, never a cached one), and
its ``compute.context()`` lives in a copied :mod:`contextvars` context. For the length of the
attempt the worker's file descriptors 1 and 2 are the job's log, appended live; the attempt then
ends as an interpreter does (the job's non-daemon threads are joined, then the ``atexit``
functions it registered run).

The attempt reports to the driver (:mod:`compute.backends.ray_watch`) through files in its
attempt folder only: ``started.json`` (pid, host, GPUs, log offset) first, then the runner's own
``run.json``, ``outcome.json`` and ``result.pkl``.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import io
import json
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from compute.code import checkout_dir
from compute.model import SPEC_VERSION, Environment, JobSpec
from compute.state import JobFolder, write_atomic

#: The attempt's start marker in its attempt folder.
STARTED_FILE = "started.json"


def pack(
    job_dir: str,
    attempt: int,
    env: Mapping[str, str],
    spec: JobSpec | None = None,
    payload: bytes | None = None,
) -> bytes:
    """The Ray task's one argument for attempt ``attempt`` (see :func:`run_attempt` for the
    parts), pickled with the spec's version, which :func:`run_packed` checks."""
    return pickle.dumps(
        (SPEC_VERSION, job_dir, attempt, dict(env), spec, payload),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def run_packed(message: bytes, gpus: tuple[int, ...]) -> int:
    """:func:`run_attempt` with the parts :func:`pack` put in ``message``.

    Raises:
        InvalidArgumentError: the submitter's flowlake writes another version of the spec.
    """
    version, job_dir, attempt, env, spec, payload = pickle.loads(message)
    if version != SPEC_VERSION:
        from store.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"job spec version {version} is not {SPEC_VERSION}; "
            "submitter and runner run different flowlake versions"
        )
    return run_attempt(job_dir, attempt, gpus, env, spec, payload)


def run_attempt(
    job_dir: str,
    attempt: int,
    gpus: tuple[int, ...],
    env: Mapping[str, str],
    spec: JobSpec | None = None,
    payload: bytes | None = None,
) -> int:
    """Run attempt ``attempt`` of the job in ``job_dir`` in this process; returns the runner's
    exit status (0: succeeded and merged).

    With ``spec`` (and ``payload`` for a callable) the job was sent before its folder was
    written (:class:`compute.backends.SendsEarly`): the attempt starts from them without
    waiting, makes the folders it writes to, looks for the job's ``withdrawn`` marker right
    before the job's code (not run when it is there), and waits for the spec file (the last of
    the job's bookkeeping) before it first opens the lake, so a withdrawn job writes nothing
    there. Without, the job is written already and read from its folder.

    ``env`` (the submitter's variables, secrets such as ``FLOWLAKE_TOKEN`` among them) is in the
    worker's ``os.environ`` for the attempt only: the worker keeps none of it for the next job.

    The runner writes the outcome itself; an exception raised here (the lake could not be
    opened, the payload could not be unpickled) is the attempt's failure.
    """
    folder = JobFolder(Path(job_dir))
    sent_early = spec is not None
    if spec is None:
        _await_spec(folder)
        spec = folder.spec()
    out = folder.attempt_dir(attempt)
    out.mkdir(parents=True, exist_ok=True)
    visible = ",".join(str(g) for g in gpus)
    job_env = {
        **env,
        "CUDA_VISIBLE_DEVICES": visible,
        "FLOWLAKE_JOB_GPUS": visible,
        "FLOWLAKE_JOB_ID": spec.job_id,
        "PYTHONUNBUFFERED": "1",
    }
    # The environment is put back by environ_applied, once the job's threads and exit functions
    # are done: what the job changed in it goes with what the attempt set.
    with environ_applied(job_env), _log_as_output(folder.log_file) as offset:
        _write_started(
            out / STARTED_FILE,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": _hostname(),
                    "gpus": list(gpus),
                    "offset": offset,
                    "time": time.time(),
                }
            ).encode(),
        )
        from compute import runner

        checkout = str(checkout_dir(folder.path.parent.parent / "code", spec.code_snapshot))
        with _restored_process_state(checkout), _collected_atexit() as exit_functions:
            threads = set(threading.enumerate())
            code = contextvars.copy_context().run(
                runner.main,
                job_dir,
                attempt,
                offset,
                spec=spec,
                payload=payload,
                admitted=(lambda wait: _admitted(folder, wait)) if sent_early else None,
            )
            for thread in threading.enumerate():
                if thread not in threads and not thread.daemon and not _pool_worker(thread):
                    thread.join()
            for function in reversed(exit_functions):
                with contextlib.suppress(Exception):
                    function()
            from tracking import exits

            exits.forget_uncaught()  # the job's own failure, said to its exit functions
    return code


#: This host's name, asked once per process.
_host: list[str] = []


def _hostname() -> str:
    if not _host:
        _host.append(socket.gethostname())
    return _host[0]


def _write_started(path: Path, data: bytes) -> None:
    """Write the start marker with one ``write`` to a new file (no rename: the marker is
    written once, and a reader that finds it empty or cut takes it as not there yet, see
    :func:`read_started`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_started(attempt_dir: Path) -> dict[str, Any] | None:
    """The attempt's start marker, or None while it is not (wholly) written."""
    try:
        text = (attempt_dir / STARTED_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        started: dict[str, Any] = json.loads(text)
    except ValueError:  # being written
        return None
    return started


#: Seconds an attempt waits for its job's spec (the submitter writes it while Ray starts the
#: attempt, see :class:`compute.backends.SendsEarly`); a submitter that dies meanwhile has its
#: tasks ended by Ray, and one that fails withdraws the attempt.
SPEC_WAIT_S = 600.0
#: The longest pause between two looks for the spec, in seconds.
SPEC_POLL_MAX_S = 0.0005


def _await_spec(folder: JobFolder) -> None:
    """Wait until the job's spec file exists, the last of what the submitter writes before the
    job is one. Polls with pauses growing from 50 us to :data:`SPEC_POLL_MAX_S`: the spec is
    usually there already, else due within milliseconds.

    Raises:
        ComputeError: the job was withdrawn (its ``withdrawn`` marker exists, or its folder
            went away: the submission failed and was undone), or the spec did not come within
            :data:`SPEC_WAIT_S`.
    """
    if folder.spec_file.is_file():
        return
    from compute.errors import ComputeError

    deadline = time.monotonic() + SPEC_WAIT_S
    pause = 0.00005
    while not folder.spec_file.is_file():
        if not folder.path.is_dir() or folder.withdrawn_file.exists():
            raise ComputeError(f"job {folder.job_id} was withdrawn before it started")
        if time.monotonic() > deadline:
            raise ComputeError(f"job {folder.job_id} got no spec within {SPEC_WAIT_S:g} s")
        time.sleep(pause)
        pause = min(pause * 2, SPEC_POLL_MAX_S)


def _admitted(folder: JobFolder, wait: bool) -> None:
    """For a job sent before its bookkeeping was written: with ``wait``, wait until it is
    written (:func:`_await_spec`); without, only look whether the job was withdrawn.

    Raises:
        ComputeError: the job was withdrawn.
    """
    if wait:
        _await_spec(folder)
    elif folder.withdrawn_file.exists():
        from compute.errors import ComputeError

        raise ComputeError(f"job {folder.job_id} was withdrawn before it started")


def _pool_worker(thread: threading.Thread) -> bool:
    """Whether ``thread`` is an idle-able ``concurrent.futures`` pool worker: an interpreter
    stops those at exit through threading's exit hooks, which a worker that goes on running
    jobs must not run (they stop every pool of the process for good)."""
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", None) == "concurrent.futures.thread"


@contextlib.contextmanager
def _log_as_output(log_file: Path) -> Iterator[int]:
    """Make file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``, unbuffered) append to
    ``log_file`` for the block, so the job's output, its subprocesses' included, is live in the
    log; yields the log's size before the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), write_through=True, errors="backslashreplace"
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
    )
    try:
        yield offset
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def environ_applied(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the block, then put ``os.environ`` back as it was."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _restored_process_state(checkout: str) -> Iterator[None]:
    """Undo, after the block, what a job changes in the process that the next job would see
    (its environment variables are :func:`environ_applied`'s to put back): ``sys.path``,
    ``sys.argv``, the working folder, and every module imported from ``checkout``, the job's
    code snapshot (compared by file after the job, not by a copy of ``sys.modules`` taken
    before it: no module of the snapshot was loaded before, the last job's were dropped)."""
    path = list(sys.path)
    argv = list(sys.argv)
    cwd = os.getcwd()
    try:
        yield
    finally:
        sys.path[:] = path
        sys.argv[:] = argv
        os.chdir(cwd)
        prefix = checkout.rstrip(os.sep) + os.sep
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if isinstance(origin, str) and origin.startswith(prefix):
                del sys.modules[name]


@contextlib.contextmanager
def _collected_atexit() -> Iterator[list[Callable[[], Any]]]:
    """Collect the ``atexit`` functions the job registers, to run when its attempt ends (the
    worker's own exit may be long after, or never come)."""
    collected: list[Callable[[], Any]] = []
    register = atexit.register

    def collect(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        collected.append(lambda: function(*args, **kwargs))
        return function

    atexit.register = collect  # type: ignore[assignment]
    try:
        yield collected
    finally:
        atexit.register = register


#: Marks a cached environment whose interpreter has been seen to host a Ray worker.
RAY_READY = ".flowlake-ray-ready"
#: Seconds the check that an environment can host a Ray worker may take.
RAY_CHECK_TIMEOUT_S = 120


def prepare_environment(environment: Environment) -> tuple[str, str]:
    """Build (or find in the cache) the job's environment on this node, and check once that its
    interpreter can host a Ray worker (Ray would otherwise retry starting that worker forever,
    leaving the job queued: say, a job pinned a ``protobuf`` Ray cannot import with).

    Returns:
        ``("ok", <interpreter path>)`` or ``("error", <message>)``: uv's message, or why the
        environment cannot run Ray; the node is the caller's to read from the task's context.
    """
    from compute.envs import ensure
    from compute.errors import EnvironmentBuildError

    try:
        python = ensure(environment)
    except EnvironmentBuildError as exc:
        return "error", str(exc)
    ready = python.parent.parent / RAY_READY
    if not ready.is_file():
        import subprocess

        try:
            done = subprocess.run(
                [str(python), "-c", "import ray, compute.backends.ray_attempt"],
                capture_output=True,
                timeout=RAY_CHECK_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "error", f"the job's environment took over {RAY_CHECK_TIMEOUT_S} s to import ray"
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            return "error", (
                "the job's environment cannot run a Ray worker (its packages come before Ray's "
                f"own, and importing ray fails there): {' / '.join(tail)}"
            )
        write_atomic(ready, b"")
    return "ok", str(python)
