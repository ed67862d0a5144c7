"""The job side: run one attempt of a job in this process and record its outcome.

Started by a supervisor (:mod:`compute.supervise`) as
``python -P -m compute.runner <job folder> <attempt> <log offset>`` with stdout and stderr
going to the job's log, or forked by it (:func:`run_forked`), which saves an interpreter start.
It runs the user's callable or command in the checkout of the code snapshot, and then either
commits and merges the attempt's tracking run (success) or records it failed. The lake is
opened (and the job's output branch created at the pinned input commit, when it is new), and
the run (its branch from the pinned input commit, its record and tags) started, when the job's
code first asks for them through :func:`compute.context`, else when the code
returns: neither the store's imports (pyarrow) nor the tracking package nor the run's first
writes delay the code's first line. A lake the job cannot open fails the attempt then, with
nothing merged. What it
tells the supervisor goes through files in the attempt folder (``run.json``, ``outcome.json``,
``result.pkl``), never through stdout, so nothing the job prints can corrupt it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from compute.code import checkout_dir, load_payload
from compute.forked import redirect_to_log, run_then_exit
from compute.inside import JobContext, activate
from compute.model import PYTHON_NAMES, JobSpec
from compute.state import JobFolder, write_atomic
from store import JOB_FOLDER_VARIABLE
from store.errors import ConflictError

# What only some jobs need (subprocess, runpy, traceback, the store itself) is imported where it
# is used: the local supervisor imports this module on the way to the job's first line.

if TYPE_CHECKING:
    from store.branch import Branch
    from store.lake import Lake
    from tracking.run import Run

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its supervisor dies, so a supervisor killed with
    SIGKILL never leaves a job running without a lease. Asked once per process (a forked
    child is asked again: the setting is not inherited)."""
    pid = os.getpid()
    if _asked_to_die == [pid]:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _asked_to_die[:] = [pid]


#: The process that last asked to die with its parent (:func:`_die_with_parent`).
_asked_to_die: list[int] = []


class CommandFailed(Exception):
    """The job's command exited with a non-zero status."""


class FunctionExited(Exception):
    """The job's function called ``sys.exit`` (raised ``SystemExit``) instead of returning."""


def exit_status(code: object) -> tuple[int, str | None]:
    """How Python ends a process on ``SystemExit(code)``: its exit status and the message it
    prints on stderr (None: prints nothing). ``None`` is status 0, an int is that status, and
    anything else (``sys.exit("bad things")``) is printed and gives status 1."""
    if code is None:
        return 0, None
    if isinstance(code, int):
        return int(code), None
    return 1, str(code)


def describe_exit(what: str, status: int, message: str | None) -> str:
    """``python train.py exited with status 1: bad things``."""
    return f"{what} exited with status {status}" + (f": {message}" if message else "")


def _exited(exc: SystemExit) -> tuple[int, str | None]:
    """Print ``exc``'s message on stderr as Python would on its way out; its exit status and
    message."""
    status, message = exit_status(exc.code)
    if message is not None:
        sys.stdout.flush()
        print(message, file=sys.stderr)
    return status, message


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, from the job's own code on: the frames of this
    module that called it are left out."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def call_function(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """``fn(**args)``; a ``SystemExit`` from it (any status, 0 and None included: a job's
    function ends by returning) is printed as Python prints it and becomes :class:`FunctionExited`.

    Raises:
        FunctionExited: ``fn`` called ``sys.exit``.
    """
    try:
        return fn(**args)
    except SystemExit as exc:
        status, message = _exited(exc)
        what = f"{getattr(fn, '__qualname__', None) or repr(fn)}()"
        if status == 0:
            raise FunctionExited(
                f"{what} called sys.exit({exc.code!r}) instead of returning (a job's function "
                "succeeds by returning its result)"
            ) from None
        raise FunctionExited(describe_exit(what, status, message)) from None


def run_command(argv: tuple[str, ...]) -> None:
    """Run a command job: ``python script.py ...`` / ``python -m mod ...`` in this process (so
    :func:`compute.context` works in it), anything else as a child process.

    Raises:
        CommandFailed: a non-zero exit status.
    """
    if argv[0] in PYTHON_NAMES and len(argv) >= 2 and argv[1] != "-c":
        import runpy

        if argv[1] == "-m" and len(argv) >= 3:
            sys.argv = [argv[2], *argv[3:]]
            target, as_module = argv[2], True
        else:
            sys.argv = list(argv[1:])
            target, as_module = argv[1], False
        try:
            if as_module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as exc:  # as ``python train.py`` ends: message on stderr, status
            status, message = _exited(exc)
            if status != 0:
                raise CommandFailed(describe_exit(" ".join(argv), status, message)) from None
        return
    command = list(argv)
    if command[0] in PYTHON_NAMES:
        command[0] = sys.executable
    sys.stdout.flush()
    sys.stderr.flush()
    import subprocess

    code = subprocess.call(command)
    if code != 0:
        raise CommandFailed(f"{' '.join(argv)} exited with status {code}")


def _store_log(run: Any, folder: JobFolder, attempt: int, offset: int) -> None:
    """Attach this attempt's log so far to its run, next to the run's own files
    (``_flowlake/runs/<run_id>/logs/attempt-<n>.log``)."""
    from tracking import layout

    sys.stdout.flush()
    sys.stderr.flush()
    with open(folder.log_file, "rb") as f:
        f.seek(offset)
        data = f.read()
    local = folder.attempt_dir(attempt) / f"attempt-{attempt}.log"
    local.write_bytes(data)
    run.log_artifact(local, artifact_path=f"{layout.run_dir(run.id)}/logs")


class AttemptVersioning:
    """The attempt's lake and tracking run, each opened once, on first use, from any thread.

    Attributes:
        seconds: time spent opening the lake and starting the run (versioning work, for the
            benchmarks' timings).
    """

    def __init__(
        self,
        spec: JobSpec,
        folder: JobFolder,
        attempt: int,
        gpus: tuple[int, ...],
        admitted: Callable[[bool], None] | None = None,
    ) -> None:
        self._admitted = admitted
        self._spec = spec
        self._folder = folder
        self._attempt = attempt
        self._gpus = gpus
        self._lock = threading.RLock()
        self._raw_lake: Lake | None = None
        self._lake: Lake | None = None
        self._run: Run | None = None
        self.seconds = 0.0

    @property
    def started(self) -> bool:
        """Whether the run has been started."""
        return self._run is not None

    @property
    def _raw(self) -> Lake:
        """The lake as the submitter opened it (reads default to ``main``)."""
        with self._lock:
            if self._raw_lake is None:
                began = time.perf_counter()
                if self._admitted is not None:  # nothing reaches the lake from a withdrawn job
                    self._admitted(True)
                import store
                from store.policy.enforce import check_job_identity

                spec = self._spec
                # In the submitter's perimeter; a token comes from FLOWLAKE_TOKEN only.
                lake = store.open(
                    spec.lake_location,
                    namespace=spec.namespace,
                    user=spec.user,
                    perimeter=spec.perimeter,
                    create=False,
                )
                try:
                    check_job_identity(lake.backend, spec.principal, spec.perimeter)
                    ensure_output_branch(lake, spec)
                except BaseException:
                    lake.close()
                    raise
                self._raw_lake = lake
                self.seconds += time.perf_counter() - began
            return self._raw_lake

    def lake(self) -> Lake:
        with self._lock:
            if self._lake is None:
                from compute.pinned import PinnedLake

                self._lake = PinnedLake(self._raw, self._spec.input_commit)
            return self._lake

    def run(self) -> Run:
        with self._lock:
            if self._run is None:
                self._raw  # noqa: B018 - opened first: its time is counted there
                began = time.perf_counter()
                self._run = self._start()
                self.seconds += time.perf_counter() - began
            return self._run

    def branch(self) -> Branch:
        return self._raw.get_branch(self.run().run_branch)

    def _start(self) -> Run:
        import tracking
        from compute.code import load_snapshot

        spec = self._spec
        code, _ = load_snapshot(self._folder.path.parent.parent / "code", spec.code_snapshot)
        run = tracking.start_run(
            self._raw,
            branch=spec.output_branch,
            name=spec.name,
            input_commit=spec.input_commit,
            code=code,
            tags={
                "compute.job_id": spec.job_id,
                "compute.backend": spec.backend,
                "compute.attempt": self._attempt,
                "compute.gpus": ",".join(map(str, self._gpus)),
                "compute.resources": spec.resources.describe(),
            },
        )
        write_atomic(
            self._folder.attempt_dir(self._attempt) / "run.json",
            json.dumps({"run_id": run.id, "run_branch": run.run_branch}).encode(),
        )
        return run


def ensure_output_branch(lake: Lake, spec: JobSpec) -> None:
    """Create the job's output branch at its input commit unless it exists (the submitter
    checked the name but left creating it to the attempt, off the way to the job's first
    line). Idempotent: the jobs of a sweep racing to create one branch all end up using it,
    wherever it is by then, as a branch that existed at submit is used.

    Raises:
        StoreError: the branch cannot be created (say, a tag of that name appeared since).
    """
    from store.errors import BranchNotFoundError

    try:
        lake.get_branch(spec.output_branch)
    except BranchNotFoundError:
        lake.branch(spec.output_branch, source=spec.input_commit, exist_ok=True)


#: The attempt's working folder, in its attempt folder.
WORK_FOLDER = "work"


def working_folder(checkout: Path, workdir: str, work: Path) -> Path:
    """Make ``work``, the attempt's working folder, look like ``checkout``: each entry of the
    checkout's root is a symbolic link to it, but the folders down to ``workdir`` (a
    ``/``-separated path in the checkout), which are real folders holding links to their
    entries in turn. Returns the folder the job starts in (``work/<workdir>``).

    Jobs of one snapshot share its checkout; each attempt has its own working folder, so what a
    job writes to its working folder (a checkpoint, ``model.pt``) is never seen by another job,
    even one running at once (writing through a link into the snapshot's own folders or files
    still changes the checkout: the snapshot's files are code, not scratch space). Its cost
    grows with the entries along ``workdir``, not with the project.
    """
    source, target = checkout, work
    parts = [p for p in workdir.split("/") if p]
    target.mkdir(parents=True, exist_ok=True)
    for depth in range(len(parts) + 1):
        inner = parts[depth] if depth < len(parts) else None
        with os.scandir(source) as entries:
            for entry in entries:
                if entry.name != inner:
                    os.symlink(entry.path, target / entry.name)
        if inner is None:
            return target
        source, target = source / inner, target / inner
        target.mkdir(exist_ok=True)
    return target


def main(
    job_dir: str,
    attempt: int,
    offset: int,
    *,
    spec: JobSpec | None = None,
    payload: bytes | None = None,
    admitted: Callable[[bool], None] | None = None,
) -> int:
    """Run attempt ``attempt`` of the job in ``job_dir``; returns 0 when it succeeded and merged.

    Args:
        spec, payload: the job's spec and pickled payload, when the caller has them (a Ray
            attempt is sent them); else read from the job's folder.
        admitted: for a job sent before its bookkeeping was written (a Ray job): raises when
            the job was withdrawn (its bookkeeping failed). Called with False right before the
            job's code (a look, no wait), and with True before the attempt first opens the
            lake (waits until the bookkeeping is written): a withdrawn job writes nothing.
    """
    _die_with_parent()
    began = time.perf_counter()
    folder = JobFolder(Path(job_dir))
    if spec is None:
        spec = folder.spec()
    out = folder.attempt_dir(attempt)
    out.mkdir(parents=True, exist_ok=True)
    gpus = tuple(int(g) for g in os.environ.get("FLOWLAKE_JOB_GPUS", "").split(",") if g)
    versioning = AttemptVersioning(spec, folder, attempt, gpus, admitted)
    checkout = checkout_dir(folder.path.parent.parent / "code", spec.code_snapshot)
    ctx = JobContext(
        input_commit=spec.input_commit,
        target_branch=spec.output_branch,
        job_id=spec.job_id,
        attempt=attempt,
        gpus=gpus,
        versioning=versioning,
    )
    activate(ctx)
    # The job runs its snapshot: imports resolve there first, relative paths start in a working
    # folder of the attempt's own that shows the snapshot (see working_folder).
    sys.path.insert(0, str(checkout))
    if spec.workdir:  # as Python puts the folder a script was started from first
        sys.path.insert(1, str(checkout / spec.workdir))
    work = out / WORK_FOLDER
    os.chdir(working_folder(checkout, spec.workdir, work))
    # store.open() opens the job's lake; a relative path, resolved here, would not.
    os.environ.update({"FLOWLAKE_LAKE": spec.lake_location, JOB_FOLDER_VARIABLE: str(work)})
    if admitted is not None:
        admitted(False)
    started = time.perf_counter()
    outcome: dict[str, Any] = {}
    try:
        if spec.kind == "command":
            run_command(spec.command)
            result = None
        else:
            fn, args = load_payload(
                payload if payload is not None else folder.payload_file.read_bytes(), checkout
            )
            result = call_function(fn, args)
        import cloudpickle  # loaded after the code: a job of commands never needs it

        payload = cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # the job's own failure, whatever it is
        text = user_traceback(exc)
        if isinstance(exc, CommandFailed | FunctionExited):  # said on stderr already
            text = ""
        else:
            print(text, file=sys.stderr, end="")
            from tracking import exits

            # As if it had ended the program: a run the code left open ends failed, not finished.
            exits.note_uncaught(exc)
        error = f"{type(exc).__name__}: {exc}"
        run = versioning.run()
        outcome["run_id"] = run.id
        _store_log(run, folder, attempt, offset)
        run.end("failed", error=error)
        outcome.update(status="failed", error=error, traceback=text or None)
        write_atomic(out / "outcome.json", json.dumps(outcome).encode())
        return 1
    (out / "result.pkl").write_bytes(payload)
    user_done = time.perf_counter()
    # Time the code spent waiting for its run to start is versioning, not the user's.
    in_user = versioning.seconds
    run = versioning.run()
    outcome["run_id"] = run.id
    _store_log(run, folder, attempt, offset)
    try:
        run.end("finished")
    except ConflictError as exc:
        outcome.update(status="failed", error=f"the job's outputs conflict: {exc}")
        write_atomic(out / "outcome.json", json.dumps(outcome).encode())
        return 1
    head = versioning._raw.get_branch(spec.output_branch).head().id
    ended = time.perf_counter()
    outcome.update(
        status="succeeded",
        output_commit=run.merge_commit or head,
        # Seconds per phase, for benchmarks: opening the lake (and starting the run, when the
        # code asked for it) before or during the user's code, the user's code itself, and
        # starting the run (when the code did not), storing the log, committing and merging.
        timings={
            "setup": started - began + in_user,
            "user": user_done - started - in_user,
            "finish": ended - user_done,
        },
    )
    write_atomic(out / "outcome.json", json.dumps(outcome).encode())
    return 0


def run_forked(
    job_dir: str, attempt: int, offset: int, log_fd: int, env: dict[str, str]
) -> NoReturn:
    """Run one attempt in a child forked from the supervisor, which has this module imported
    already; never returns.

    The child gets its own process group (so the supervisor can stop all of it), the
    job's log as stdout and stderr (unbuffered, as ``PYTHONUNBUFFERED`` gives a fresh
    interpreter), and ``env`` as its environment.
    """

    def child() -> int:
        os.setpgid(0, 0)
        redirect_to_log(log_fd)
        os.environ.clear()
        os.environ.update(env)
        code = main(job_dir, attempt, offset)
        _exit_as_an_interpreter_does()
        return code

    run_then_exit(child)


def _exit_as_an_interpreter_does() -> None:
    """What a fresh interpreter does on its way out, which ``os._exit`` would skip: wait for the
    job's non-daemon threads, then run its ``atexit`` functions."""
    import atexit

    # The interpreter's own exit path: the threading module's exit hooks (which, say, let
    # concurrent.futures workers stop), then a join of every non-daemon thread.
    getattr(threading, "_shutdown")()  # noqa: B009 - private, not in the stubs
    atexit._run_exitfuncs()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
