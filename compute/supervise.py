"""The supervisor of one job: environment, lease, attempts, timeout, cancel, final status.

On the local backend it is its own detached process (``python -P -m compute.supervise <job
folder> <capacity>``), so a job outlives the process that submitted it; on Ray it runs inside
the Ray task, which has been granted the job's resources already. Each attempt runs in a child
process (:mod:`compute.runner`) whose stdout and stderr go straight to the job's log file, so
the log is live while the job runs. The supervisor is the only writer of ``status.json``.
The local supervisor forks that child from itself (it has the runner's modules imported
already) when the job runs with the submitter's interpreter; in a Ray worker, which has threads
of its own, and for a job environment's interpreter, the child is a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compute import machine
from compute.leases import Ledger
from compute.model import JobSpec, JobStatus
from compute.state import CANCELLED_RUNNING, JobFolder, StatusRecord
from store.processes import hostname, start_token

if TYPE_CHECKING:
    import subprocess

POLL_S = 0.05
#: Seconds a job may take to exit after SIGTERM before it gets SIGKILL.
KILL_GRACE_S = 2.0
#: How much of the log a job that died without an outcome reports as its traceback.
LOG_TAIL_BYTES = 4000


def supervise(
    job_dir: str,
    gpus: tuple[int, ...] | None = None,
    fork: bool = False,
    capacity: machine.Capacity | None = None,
) -> StatusRecord:
    """Run the job in ``job_dir`` to its end; returns its final status.

    Args:
        job_dir: the job's folder.
        gpus: devices already granted (Ray); None takes a machine-wide lease here first.
        fork: start attempts that use this interpreter by forking this process (only where it
            runs no threads: the local backend's own supervisor process).
        capacity: the machine's capacity as the submitter detected it (default: detect it
            here), which the lease is taken against.
    """
    folder = JobFolder(Path(job_dir))
    spec = folder.spec()
    pid = os.getpid()
    record = StatusRecord(
        JobStatus.QUEUED.value, host=hostname(), pid=pid, pid_start=start_token(pid)
    )
    folder.write_status(record)
    ledger = Ledger() if gpus is None else None
    try:
        python = sys.executable
        if not spec.environment.is_default:
            from compute.envs import ensure

            with open(folder.log_file, "ab") as log:
                log.write(b"[flowlake] preparing the environment\n")
            python = str(ensure(spec.environment))
        fork = fork and python == sys.executable
        if fork:
            import compute.runner  # noqa: F401 - loaded once, before the job waits for a lease
        if ledger is not None:
            lease = ledger.acquire(
                spec.job_id,
                spec.resources,
                capacity or machine.detect(),
                should_stop=folder.cancel_requested,
            )
            if lease is None:
                return _final(folder, record, JobStatus.CANCELLED, error="cancelled while queued")
            gpus = lease.gpus
        assert gpus is not None
        record = replace(record, gpus=tuple(gpus), started_at=time.time())
        for attempt in range(1, spec.retries + 2):
            if folder.cancel_requested():
                when = "while queued" if attempt == 1 else "between attempts"
                return _final(folder, record, JobStatus.CANCELLED, error=f"cancelled {when}")
            record = replace(record, attempt=attempt)
            status, outcome = _attempt(folder, spec, record, attempt, python, fork)
            record = replace(
                record,
                run_id=outcome.get("run_id") or record.run_id,
                runner_pid=None,
                output_commit=outcome.get("output_commit"),
            )
            retry = status is JobStatus.FAILED and attempt <= spec.retries
            if not retry:
                return _final(
                    folder, record, status, outcome.get("error"), outcome.get("traceback")
                )
            with open(folder.log_file, "ab") as log:
                log.write(f"[flowlake] attempt {attempt} failed; retrying\n".encode())
        raise AssertionError("unreachable")
    except Exception as exc:
        # Whatever stops the supervisor itself (no uv, a broken environment, a full disk) ends
        # the job failed with the reason where users look: status, job log, wait().
        error = str(exc) or type(exc).__name__
        with contextlib.suppress(OSError), open(folder.log_file, "ab") as log:
            log.write(f"[flowlake] failed: {error}\n".encode())
        return _final(folder, record, JobStatus.FAILED, error=error)
    finally:
        if ledger is not None:
            ledger.release(spec.job_id)


def _final(
    folder: JobFolder,
    record: StatusRecord,
    status: JobStatus,
    error: str | None = None,
    traceback: str | None = None,
) -> StatusRecord:
    final = replace(
        record,
        status=status.value,
        error=error,
        traceback=traceback,
        runner_pid=None,
        ended_at=time.time(),
    )
    folder.write_status(final)
    return final


class _Forked:
    """A child forked from this process, watched like a :class:`subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        import subprocess

        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(POLL_S / 5)
        assert self.returncode is not None
        return self.returncode


def _start(
    folder: JobFolder, attempt: int, python: str, env: dict[str, str], fork: bool
) -> tuple[subprocess.Popen[bytes] | _Forked, int]:
    """Start the attempt's process with the job's log as its output; returns it and the log
    offset its output starts at."""
    with open(folder.log_file, "ab") as log:
        offset = log.tell()
        if fork:
            from compute.runner import run_forked

            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_forked(str(folder.path), attempt, offset, log.fileno(), env)
            # Also set here: a stop that comes before the child's own setpgid still finds it.
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            return _Forked(pid), offset
        import subprocess

        child = subprocess.Popen(
            [python, "-P", "-m", "compute.runner", str(folder.path), str(attempt), str(offset)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        return child, offset


def _attempt(
    folder: JobFolder,
    spec: JobSpec,
    record: StatusRecord,
    attempt: int,
    python: str,
    fork: bool = False,
) -> tuple[JobStatus, dict[str, Any]]:
    """Run one attempt in a child process and return its status and outcome."""
    out = folder.attempt_dir(attempt)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    visible = ",".join(str(g) for g in record.gpus)
    env.update(
        CUDA_VISIBLE_DEVICES=visible,
        FLOWLAKE_JOB_GPUS=visible,
        FLOWLAKE_JOB_ID=spec.job_id,
        PYTHONUNBUFFERED="1",
    )
    child, offset = _start(folder, attempt, python, env, fork)
    folder.write_status(replace(record, status=JobStatus.RUNNING.value, runner_pid=child.pid))
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    why: tuple[JobStatus, str] | None = None
    run_seen = False
    while child.poll() is None:
        if not run_seen and (out / "run.json").is_file():
            run_seen = True
            run_id = json.loads((out / "run.json").read_text())["run_id"]
            folder.write_status(
                replace(record, status="running", runner_pid=child.pid, run_id=run_id)
            )
        if why is None and folder.cancel_requested():
            why = (JobStatus.CANCELLED, CANCELLED_RUNNING)
            _stop(child)
        elif why is None and deadline is not None and time.monotonic() > deadline:
            why = (JobStatus.FAILED, f"timed out after {spec.timeout:g} s")
            _stop(child)
        time.sleep(POLL_S)
    _end_group(child.pid)
    outcome_file = out / "outcome.json"
    run_file = out / "run.json"
    if outcome_file.is_file() and why is None:
        outcome: dict[str, Any] = json.loads(outcome_file.read_text())
        return JobStatus(outcome["status"]), outcome
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    code = child.poll()
    assert code is not None
    if why is not None:
        status, error = why
    elif code < 0:
        sig = signal.Signals(-code).name
        status, error = JobStatus.KILLED, f"killed by {sig}"
    else:
        status, error = JobStatus.FAILED, f"the job exited with status {code}"
    with open(folder.log_file, "rb") as f:
        f.seek(offset)
        tail = f.read()[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
    with open(folder.log_file, "ab") as log:
        log.write(f"[flowlake] {status.value}: {error}\n".encode())
    run_id = _end_run(spec, folder, run_id, attempt, offset, status, error, record.gpus)
    return status, {"run_id": run_id, "error": error, "traceback": tail or None}


def _stop(child: subprocess.Popen[bytes] | _Forked) -> None:
    """SIGTERM the attempt's process group, then SIGKILL what is left after a grace period."""
    import subprocess

    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def _end_group(pgid: int) -> None:
    """End what the attempt's process left running in its process group (a data loader's
    workers, a background server): the job's lease ends with it, and a leftover must not keep
    using GPUs the next job is granted. SIGTERM, then SIGKILL after a grace period; nothing to
    do, and no wait, when the group is empty."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _end_run(
    spec: JobSpec,
    folder: JobFolder,
    run_id: str | None,
    attempt: int,
    offset: int,
    status: JobStatus,
    error: str,
    gpus: tuple[int, ...],
) -> str | None:
    """Record an attempt that could not record itself (killed, cancelled, timed out) on its
    run branch: logs, status and error; nothing is merged. An attempt stopped before its code
    asked for its run gets its run started here. Returns the run's id (None: it could not be
    recorded; the log says why)."""
    import tracking
    from compute.runner import AttemptVersioning
    from tracking import layout

    try:
        versioning = AttemptVersioning(spec, folder, attempt, gpus)
        if run_id is None:
            run = versioning.run()
        else:
            run = tracking.resume_run(versioning._raw, run_id, merge=False)
        with open(folder.log_file, "rb") as f:
            f.seek(offset)
            data = f.read()
        local = folder.attempt_dir(attempt) / f"attempt-{attempt}.log"
        local.write_bytes(data)
        run.log_artifact(local, artifact_path=f"{layout.run_dir(run.id)}/logs")
        run.end("failed" if status is JobStatus.FAILED else "killed", error=error)
        return run.id
    except Exception as exc:  # the job's status is recorded anyway; say why the run is not
        with open(folder.log_file, "ab") as log:
            log.write(f"[flowlake] could not record run {run_id or ''}: {exc}\n".encode())
        return run_id


if __name__ == "__main__":
    # ``python -m compute.supervise <job folder> [<capacity>]``: the local backend passes the
    # capacity it detected, which saves this process asking NVML and nvidia-smi again.
    given = machine.Capacity.from_json(sys.argv[2]) if len(sys.argv) > 2 else None
    final = supervise(sys.argv[1], fork=True, capacity=given)
    sys.exit(0 if final.status == JobStatus.SUCCEEDED.value else 1)
