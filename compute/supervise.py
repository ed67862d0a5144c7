"""The supervisor of one job: environment, lease, attempts, timeout, cancel, final status.

On the local backend it is its own detached process (``python -P -m compute.supervise <job
folder>``), so a job outlives the process that submitted it; on Ray it runs inside the Ray
task, which has been granted the job's resources already. Each attempt runs in a child
process (:mod:`compute.runner`) whose stdout and stderr go straight to the job's log file, so
the log is live while the job runs. The supervisor is the only writer of ``status.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from compute import machine
from compute.leases import Ledger
from compute.model import JobSpec, JobStatus
from compute.state import JobFolder, StatusRecord

POLL_S = 0.05
#: Seconds a job may take to exit after SIGTERM before it gets SIGKILL.
KILL_GRACE_S = 2.0
#: How much of the log a job that died without an outcome reports as its traceback.
LOG_TAIL_BYTES = 4000


def supervise(job_dir: str, gpus: tuple[int, ...] | None = None) -> StatusRecord:
    """Run the job in ``job_dir`` to its end; returns its final status.

    Args:
        job_dir: the job's folder.
        gpus: devices already granted (Ray); None takes a machine-wide lease here first.
    """
    folder = JobFolder(Path(job_dir))
    spec = folder.spec()
    record = StatusRecord(JobStatus.QUEUED.value, host=socket.gethostname(), pid=os.getpid())
    folder.write_status(record)
    ledger = Ledger() if gpus is None else None
    try:
        python = sys.executable
        if not spec.environment.is_default:
            from compute.envs import ensure
            from compute.errors import EnvironmentBuildError

            with open(folder.log_file, "ab") as log:
                log.write(b"[flowlake] preparing the environment\n")
            try:
                python = str(ensure(spec.environment))
            except EnvironmentBuildError as exc:
                return _final(folder, record, JobStatus.FAILED, error=str(exc))
        if ledger is not None:
            lease = ledger.acquire(
                spec.job_id,
                spec.resources,
                machine.detect(),
                should_stop=folder.cancel_requested,
            )
            if lease is None:
                return _final(folder, record, JobStatus.CANCELLED, error="cancelled while queued")
            gpus = lease.gpus
        assert gpus is not None
        record = replace(record, gpus=tuple(gpus), started_at=time.time())
        for attempt in range(1, spec.retries + 2):
            if folder.cancel_requested():
                return _final(folder, record, JobStatus.CANCELLED, error="cancelled")
            record = replace(record, attempt=attempt)
            status, outcome = _attempt(folder, spec, record, attempt, python)
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


def _attempt(
    folder: JobFolder, spec: JobSpec, record: StatusRecord, attempt: int, python: str
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
    with open(folder.log_file, "ab") as log:
        offset = log.tell()
        child = subprocess.Popen(
            [python, "-P", "-m", "compute.runner", str(folder.path), str(attempt), str(offset)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
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
            why = (JobStatus.CANCELLED, "cancelled")
            _stop(child)
        elif why is None and deadline is not None and time.monotonic() > deadline:
            why = (JobStatus.FAILED, f"timed out after {spec.timeout:g} s")
            _stop(child)
        time.sleep(POLL_S)
    outcome_file = out / "outcome.json"
    run_file = out / "run.json"
    if outcome_file.is_file() and why is None:
        outcome: dict[str, Any] = json.loads(outcome_file.read_text())
        return JobStatus(outcome["status"]), outcome
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    if why is not None:
        status, error = why
    elif child.returncode < 0:
        sig = signal.Signals(-child.returncode).name
        status, error = JobStatus.KILLED, f"killed by {sig}"
    else:
        status, error = JobStatus.FAILED, f"the job exited with status {child.returncode}"
    with open(folder.log_file, "rb") as f:
        f.seek(offset)
        tail = f.read()[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
    with open(folder.log_file, "ab") as log:
        log.write(f"[flowlake] {status.value}: {error}\n".encode())
    if run_id is not None:
        _end_run(spec, folder, run_id, attempt, offset, status, error)
    return status, {"run_id": run_id, "error": error, "traceback": tail or None}


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the attempt's process group, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def _end_run(
    spec: JobSpec,
    folder: JobFolder,
    run_id: str,
    attempt: int,
    offset: int,
    status: JobStatus,
    error: str,
) -> None:
    """Record an attempt that could not record itself (killed, cancelled, timed out) on its
    run branch: logs, status and error; nothing is merged."""
    import store
    import tracking
    from tracking import layout

    try:
        with store.open(
            spec.lake_location, namespace=spec.namespace, user=spec.user, create=False
        ) as lake:
            run = tracking.resume_run(lake, run_id, merge=False)
            with open(folder.log_file, "rb") as f:
                f.seek(offset)
                data = f.read()
            local = folder.attempt_dir(attempt) / f"attempt-{attempt}.log"
            local.write_bytes(data)
            run.log_artifact(local, artifact_path=f"{layout.run_dir(run_id)}/logs")
            run.end("failed" if status is JobStatus.FAILED else "killed", error=error)
    except Exception as exc:  # the job's status is recorded anyway; say why the run is not
        with open(folder.log_file, "ab") as log:
            log.write(f"[flowlake] could not record run {run_id}: {exc}\n".encode())


if __name__ == "__main__":
    final = supervise(sys.argv[1])
    sys.exit(0 if final.status == JobStatus.SUCCEEDED.value else 1)
