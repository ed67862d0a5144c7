"""The supervisor of Ray jobs: one thread in the driver that watches every job it launched.

On Ray a job's attempt runs inside a warm Ray worker (:mod:`compute.backends.ray_attempt`), so
its supervisor cannot be a parent process. It is a thread in the process that submitted the job
(Ray tasks end with their driver anyway), the only writer of the job's ``status.json``: it
launches each attempt as a Ray task, notices when it starts (``started.json``), enforces cancel
and timeout with ``ray.cancel(force=True)`` (which ends the worker; processes the job started
are terminated first), retries failed attempts, and records the attempts that could not record
themselves (killed, cancelled, timed out) on their run branch, as the local supervisor does. A
worker that dies under the job (SIGKILL, out of memory) surfaces as ``WorkerCrashedError``:
the job shows ``killed``. When the submitting process exits, its jobs end with it (Ray ends a
driver's tasks): on the way out the watcher stops them and records each one, ``cancelled`` if it
was asked to (Ctrl-C on ``flowlake run``), else ``killed``. The job's status names this process,
so a job whose driver died without that (SIGKILL) shows ``killed`` too.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, RuntimeEnvSetupError, WorkerCrashedError

from compute.backends.ray_attempt import read_started
from compute.model import JobSpec, JobStatus
from compute.state import CANCELLED_RUNNING, JobFolder, StatusRecord

POLL_S = 0.05
#: Seconds the processes a stopped job started get after SIGTERM before its worker is ended.
KILL_GRACE_S = 2.0
#: How much of the log a job that ended without an outcome reports as its traceback.
LOG_TAIL_BYTES = 4000
#: Seconds the submitting process waits on its way out for Ray to end its jobs' tasks.
CLOSE_GRACE_S = 10.0
#: Seconds a stopped or killed attempt's worker gets to be gone before its run is recorded.
WORKER_EXIT_S = 10.0

#: Launches attempt ``n`` of a job: (folder, spec, attempt, environment or None, the spec and
#: payload to start from or None) -> Ray object ref.
Launch = Callable[
    [JobFolder, JobSpec, int, "Prepared | None", "tuple[JobSpec, bytes | None] | None"], Any
]
#: Seconds a withdrawn job's attempt gets to end before its folder is removed.
WITHDRAW_WAIT_S = 10.0


@dataclass(frozen=True)
class Prepared:
    """A job environment built on one node: its interpreter and that node's Ray id."""

    python: str
    node_id: str


@dataclass
class _Watched:
    """One job the watcher supervises."""

    folder: JobFolder
    spec: JobSpec
    record: StatusRecord
    prep: Any = None
    prepared: Prepared | None = None
    ref: Any = None
    attempt: int = 0
    started: dict[str, Any] | None = None
    deadline: float | None = None
    why: tuple[JobStatus, str] | None = None
    stop_sent: float | None = field(default=None)
    #: The first attempt's spec and payload, sent in its argument (dropped once sent).
    inline: tuple[JobSpec, bytes | None] | None = None


class Watcher:
    """Supervises the Ray jobs this process launched, from one daemon thread.

    Attributes:
        failure: why the thread stopped, if it stopped on an error (jobs it held are then
            recorded failed by :meth:`check`).
    """

    def __init__(self, launch: Launch) -> None:
        self._launch = launch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._jobs: list[_Watched] = []
        self.failure: str | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowlake-ray-watch", daemon=True)
        self._thread.start()
        # Registered after ray.init's own exit hook, so it runs first, while Ray is up.
        atexit.register(self.close)

    def first_record(self) -> StatusRecord:
        """A job's status before its first attempt starts: queued, supervised by this process
        (so that it shows ``killed`` once this process is gone)."""
        return StatusRecord(JobStatus.QUEUED.value, host=socket.gethostname(), pid=os.getpid())

    def send(
        self, folder: JobFolder, spec: JobSpec, inline: tuple[JobSpec, bytes | None]
    ) -> _Watched:
        """Launch the first attempt of the job in ``folder`` now, with ``inline`` (its spec and
        payload) in its argument, before its folder is written (the attempt waits for the
        spec file right before the job's code); :meth:`admit` then supervises it, or
        :meth:`withdraw` cancels it. Returns the job, whose ``record`` is its first status."""
        job = _Watched(folder, spec, self.first_record(), inline=inline)
        self._next_attempt(job)
        return job

    def admit(self, job: _Watched) -> None:
        """Supervise a job :meth:`send` launched, once its spec and status are written."""
        with self._lock:
            self._jobs.append(job)
        self._wake.set()

    def withdraw(self, job: _Watched) -> None:
        """Withdraw the job :meth:`send` launched, whose bookkeeping failed: mark it withdrawn
        (the attempt checks that right before the job's code, as it waits for the spec file),
        cancel its task, and wait up to :data:`WITHDRAW_WAIT_S` for the task to end, so that
        the caller may then remove what the attempt wrote (its start marker, the log)."""
        with contextlib.suppress(Exception):
            job.folder.path.mkdir(parents=True, exist_ok=True)
            job.folder.withdrawn_file.touch()
        with contextlib.suppress(Exception):
            ray.cancel(job.ref, force=False)
        with contextlib.suppress(Exception):
            ray.wait([job.ref], timeout=WITHDRAW_WAIT_S)
        # Dropped now: the job lives on in the raised error's traceback, and an object ref
        # freed after ray.shutdown() ends the process (Ray's core worker exits on it).
        job.ref = None

    def add(self, folder: JobFolder, spec: JobSpec, prep: Any = None) -> None:
        """Supervise the job in ``folder``: launch its first attempt now, or once ``prep`` (the
        Ray task building its environment) has returned."""
        job = _Watched(folder, spec, self.first_record(), prep=prep)
        if prep is None:
            self._next_attempt(job)
        # Written once the task is on its way (it does not read the status): this process is
        # the job's only status writer, and the job is not in the loop before the append below.
        folder.write_status(job.record)
        with self._lock:
            self._jobs.append(job)
        self._wake.set()

    def check(self, folder: JobFolder) -> None:
        """Record a job failed when this watcher stopped on an error before it ended."""
        if self._thread.is_alive() or self.failure is None:
            return
        if not folder.status().effective().is_final:
            folder.write_status(
                replace(
                    folder.status(),
                    status=JobStatus.FAILED.value,
                    error=f"the Ray job watcher stopped: {self.failure}",
                    ended_at=time.time(),
                )
            )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while ray.is_initialized() and not self._closing.is_set():
                if not self._round():
                    self._wake.wait(1.0)
                    self._wake.clear()
        # Ray's calls raise SystemExit when ray.shutdown() disconnects this driver under them.
        except (Exception, SystemExit) as exc:  # recorded on each job that asks, by check()
            if ray.is_initialized():
                self.failure = f"{type(exc).__name__}: {exc}"
                return
            _keep_past_shutdown(exc)  # its traceback holds object refs
        if not self._closing.is_set():  # ray.shutdown() in this process ended its tasks
            with self._lock:
                jobs, self._jobs = self._jobs, []
            _keep_past_shutdown(jobs)
            for job in jobs:
                with contextlib.suppress(Exception):
                    self._final(job, JobStatus.KILLED, "Ray was shut down before the job ended")

    def _round(self) -> bool:
        """Advance every job once; False when there is none. A method of its own so that the
        object refs it handles are freed when it returns, never held by the idle loop: one
        freed while ``ray.shutdown()`` runs (after Ray's core worker stopped, before Ray let go
        of it) ends the whole process with status 1 (Ray's ``QuickExit``)."""
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return False
        refs = [j.ref if j.prep is None else j.prep for j in jobs]
        # Checked before each call: after ray.shutdown() a call would start a new Ray.
        ray.wait(refs, num_returns=1, timeout=POLL_S)
        if not ray.is_initialized():
            _keep_past_shutdown(refs)
            return True
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        for job, ref in zip(jobs, refs, strict=True):
            if self._guarded_step(job, ref in done):
                with self._lock:
                    self._jobs.remove(job)
        return True

    def close(self) -> None:
        """Stop supervising (the submitting process is exiting): end the Ray tasks of the jobs
        still held and record each one, ``cancelled`` when it was asked to be, else ``killed``
        (a started attempt's run on its branch too, with its log)."""
        from compute.bookkeeping import flush

        flush()  # jobs whose bookkeeping is being written are supervised first
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if self._thread.is_alive() or not ray.is_initialized():
            return
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            with contextlib.suppress(Exception):
                if job.why is None:
                    queued = job.started is None and job.attempt <= 1
                    job.why = (
                        (
                            JobStatus.CANCELLED,
                            "cancelled while queued" if queued else CANCELLED_RUNNING,
                        )
                        if job.folder.cancel_requested()
                        else (JobStatus.KILLED, "its submitting process exited")
                    )
                if job.prep is not None:
                    self._final(job, *job.why)
                else:
                    self._stop(job)
        held = [job for job in jobs if job.prep is None]
        with contextlib.suppress(Exception):
            ray.wait([j.ref for j in held], num_returns=len(held), timeout=CLOSE_GRACE_S)
        for job in held:
            with contextlib.suppress(Exception):
                assert job.why is not None
                ready, _ = ray.wait([job.ref], timeout=0)
                if not ready:
                    self._final(job, *job.why)
                    continue
                if job.started is None:
                    self._notice_start(job)
                status, outcome = self._outcome(job)
                job.record = replace(
                    job.record,
                    run_id=outcome.get("run_id") or job.record.run_id,
                    output_commit=outcome.get("output_commit"),
                )
                self._final(job, status, outcome.get("error"), outcome.get("traceback"))

    def _guarded_step(self, job: _Watched, done: bool) -> bool:
        """:meth:`_step`, with an error of flowlake's own (say, its state folder could not be
        written) failing that one job, stopped, rather than the watcher of every job."""
        try:
            return self._step(job, done)
        except Exception as exc:
            with contextlib.suppress(Exception):
                if job.ref is not None:
                    ray.cancel(job.ref, force=True)
            with contextlib.suppress(Exception):
                self._final(job, JobStatus.FAILED, f"its Ray supervisor failed: {exc!r}")
            return True

    def _step(self, job: _Watched, done: bool) -> bool:
        """Advance one job; True once it has its final status."""
        if job.prep is not None:
            return self._step_environment(job, done)
        folder = job.folder
        if job.started is None and not done:
            self._notice_start(job)
        if not done:
            if job.why is None and folder.cancel_requested():
                queued = job.started is None and job.attempt == 1
                job.why = (
                    JobStatus.CANCELLED,
                    "cancelled while queued" if queued else CANCELLED_RUNNING,
                )
                self._stop(job)
            elif job.why is None and job.deadline is not None and time.monotonic() > job.deadline:
                job.why = (JobStatus.FAILED, f"timed out after {job.spec.timeout:g} s")
                self._stop(job)
            return False
        if job.started is None:
            self._notice_start(job)
        status, outcome = self._outcome(job)
        job.record = replace(
            job.record,
            run_id=outcome.get("run_id") or job.record.run_id,
            runner_pid=None,
            output_commit=outcome.get("output_commit"),
        )
        if status is JobStatus.FAILED and job.attempt <= job.spec.retries:
            with open(folder.log_file, "ab") as log:
                log.write(f"[flowlake] attempt {job.attempt} failed; retrying\n".encode())
            if not folder.cancel_requested():
                self._next_attempt(job)
                return False
            status, outcome = JobStatus.CANCELLED, {"error": "cancelled between attempts"}
        self._final(job, status, outcome.get("error"), outcome.get("traceback"))
        return True

    def _step_environment(self, job: _Watched, done: bool) -> bool:
        if not done:
            if job.folder.cancel_requested():
                self._final(job, JobStatus.CANCELLED, "cancelled while queued")
                return True
            return False
        try:
            kind, value, node_id = ray.get(job.prep)
        except RayError as exc:
            self._final(job, JobStatus.FAILED, f"the environment could not be built: {exc}")
            return True
        if kind != "ok":
            self._final(job, JobStatus.FAILED, value)
            return True
        job.prep, job.prepared = None, Prepared(value, node_id)
        self._next_attempt(job)
        return False

    def _next_attempt(self, job: _Watched) -> None:
        job.attempt += 1
        job.started = job.deadline = job.why = job.stop_sent = None
        job.record = replace(job.record, attempt=job.attempt)
        inline, job.inline = job.inline, None
        job.ref = self._launch(job.folder, job.spec, job.attempt, job.prepared, inline)

    def _notice_start(self, job: _Watched) -> None:
        started = read_started(job.folder.attempt_dir(job.attempt))
        if started is None:
            return
        job.started = started
        if job.spec.timeout:
            job.deadline = time.monotonic() + job.spec.timeout
        job.record = replace(
            job.record,
            status=JobStatus.RUNNING.value,
            runner_pid=job.started["pid"],
            gpus=tuple(job.started["gpus"]),
            started_at=job.record.started_at or job.started["time"],
        )
        job.folder.write_status(job.record)

    def _stop(self, job: _Watched) -> None:
        """Terminate the processes the job started (they would outlive its worker), then end
        the attempt's Ray task, which ends its worker."""
        started = job.started
        if started is not None and started["host"] == socket.gethostname():
            children = _descendants(started["pid"])
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE_S
            while children and time.monotonic() < deadline:
                children = [p for p in children if _alive(p)]
                time.sleep(POLL_S)
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        ray.cancel(job.ref, force=True)

    def _outcome(self, job: _Watched) -> tuple[JobStatus, dict[str, Any]]:
        """The attempt's status and outcome (run id, error, traceback, output commit)."""
        out = job.folder.attempt_dir(job.attempt)
        try:
            ray.get(job.ref)
            failure: str | None = None
        except RayTaskError as exc:  # flowlake's own code failed in the worker
            failure = f"the Ray task failed: {exc.cause if exc.cause is not None else exc}"
        except WorkerCrashedError:
            failure = "killed: the Ray worker running it died (SIGKILL or out of memory)"
        except RuntimeEnvSetupError as exc:
            failure = f"Ray could not set up the job's runtime environment: {exc}"
        except RayError as exc:
            failure = f"the Ray task failed: {exc}"
        outcome_file = out / "outcome.json"
        if failure is None and outcome_file.is_file():
            # The attempt ended on its own (merged, or recorded its failure) even if a stop
            # came too late to prevent it: the outcome is what happened.
            outcome: dict[str, Any] = json.loads(outcome_file.read_text())
            return JobStatus(outcome["status"]), outcome
        if job.why is not None:
            status, error = job.why
        elif failure is not None and failure.startswith("killed"):
            status, error = JobStatus.KILLED, failure
        else:
            status, error = JobStatus.FAILED, failure or "the attempt ended without an outcome"
        if job.started is None:  # it never ran: nothing to record on a run branch
            return status, {"error": error}
        offset = int(job.started["offset"])
        with open(job.folder.log_file, "rb") as f:
            f.seek(offset)
            tail = f.read()[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
        with open(job.folder.log_file, "ab") as log:
            log.write(f"[flowlake] {status.value}: {error}\n".encode())
        if job.why is not None or status is JobStatus.KILLED:
            _await_exit(job.started)
        from compute.supervise import _end_run

        run_file = out / "run.json"
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        gpus = tuple(job.started["gpus"])
        run_id = _end_run(job.spec, job.folder, run_id, job.attempt, offset, status, error, gpus)
        return status, {"run_id": run_id, "error": error, "traceback": tail or None}

    def _final(
        self,
        job: _Watched,
        status: JobStatus,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        job.record = replace(
            job.record,
            status=status.value,
            error=error,
            traceback=traceback,
            runner_pid=None,
            ended_at=time.time(),
        )
        job.folder.write_status(job.record)


#: What held Ray object refs when Ray was shut down under the watcher, kept until the
#: interpreter exits (see :meth:`Watcher._round`).
_PAST_SHUTDOWN: list[object] = []


def _keep_past_shutdown(held: object) -> None:
    """Keep ``held`` (and the object refs in it) alive: Ray is being shut down, and an object
    ref freed before it has let go of its core worker ends the process."""
    _PAST_SHUTDOWN.append(held)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` on this host (from ``/proc``), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _await_exit(started: dict[str, Any]) -> None:
    """Wait, up to :data:`WORKER_EXIT_S`, for the worker that ran an attempt to be gone.

    Ray may report a task ended while its worker is still exiting (a forced cancel is answered
    before the worker is; a worker busy dying on a loaded machine closes its connection before
    it is reaped), and the run that worker started counts as live while its process exists:
    resuming it to record the attempt would be refused, leaving it ``running``.
    """
    if started["host"] != socket.gethostname():
        return
    deadline = time.monotonic() + WORKER_EXIT_S
    while _alive(int(started["pid"])) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    from store.processes import pid_alive

    return pid_alive(pid)
