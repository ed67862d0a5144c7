"""``Job``: a handle on a submitted job, usable from any process on the machine."""

from __future__ import annotations

import json
import numbers
import pickle
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from compute.errors import ComputeError, JobFailedError, JobTimeoutError
from compute.model import JobSpec, JobStatus
from compute.state import JobFolder, JobStore, StatusRecord
from store.errors import InvalidArgumentError

WAIT_POLL_S = 0.05


class Job:
    """A submitted job. Build it with :func:`compute.submit`, :func:`compute.get_job` or
    :func:`compute.jobs`; every property reads the job's state from disk, fresh."""

    def __init__(
        self, folder: JobFolder, handle: Any = None, written: Future[None] | None = None
    ) -> None:
        self._folder = folder
        self._spec: JobSpec | None = None
        # The supervisor process or Ray object ref when this process launched the job.
        self._handle = handle
        # Done once the job's bookkeeping is written (:mod:`compute.bookkeeping`).
        self._written = written

    def _settle(self) -> None:
        """Wait until this process has written the job's bookkeeping; raise what writing it
        raised (the job was then withdrawn, and never ran)."""
        if self._written is not None:
            self._written.result()

    def __repr__(self) -> str:
        return f"Job({self.id!r}, name={self.name!r}, status={self.status.value!r})"

    @property
    def id(self) -> str:
        """The job id: 32 hex digits (commands accept a unique prefix)."""
        return self._folder.job_id

    @property
    def spec(self) -> JobSpec:
        if self._spec is None:
            self._settle()
            self._spec = self._folder.spec()
        return self._spec

    @property
    def name(self) -> str | None:
        return self.spec.name

    def record(self) -> StatusRecord:
        """The job's status record as its supervisor last wrote it."""
        self._settle()
        self._reap()
        record = self._folder.status()
        if record.status in ("queued", "running") and record.run_id is None:
            run_id = self._attempt_run_id(record.attempt)
            if run_id:
                record = StatusRecord(**{**record.__dict__, "run_id": run_id})
        return record

    def _attempt_run_id(self, attempt: int) -> str | None:
        try:
            text = (self._folder.attempt_dir(max(attempt, 1)) / "run.json").read_text()
        except FileNotFoundError:
            return None
        return str(json.loads(text)["run_id"])

    @property
    def status(self) -> JobStatus:
        """queued, running, succeeded, failed, cancelled or killed (a job whose supervisor
        process is gone shows killed)."""
        return self.record().effective()

    @property
    def run_id(self) -> str | None:
        """The tracking run of the latest attempt (None until it has started)."""
        return self.record().run_id

    @property
    def output_commit(self) -> str | None:
        """The commit on the output branch holding the job's outputs (None unless succeeded)."""
        return self.record().output_commit

    @property
    def gpus(self) -> tuple[int, ...]:
        """The device ids the job was given."""
        return self.record().gpus

    @property
    def pid(self) -> int | None:
        """The process running the job's code while it runs on this machine, else None."""
        return self.record().runner_pid

    @property
    def error(self) -> str | None:
        return self.record().error

    def _reap(self) -> None:
        """Collect the exit of a supervisor this process started, and notice a Ray task that
        died before its supervisor could record anything."""
        handle = self._handle
        if handle is None:
            return
        poll = getattr(handle, "poll", None)
        if poll is not None:
            poll()
            return
        from compute.backends.ray import check_task

        check_task(handle, self._folder)

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the job to end and return the callable's result (None for commands).

        Args:
            timeout: seconds to wait at most (0: look once); None waits until the job ends.

        Raises:
            InvalidArgumentError: ``timeout`` is not None nor a number >= 0.
            JobFailedError: the job failed, timed out, was cancelled or was killed; the message
                holds the remote traceback.
            JobTimeoutError: ``timeout`` seconds passed first (the job goes on).
            ComputeError: the job succeeded but its result cannot be unpickled here (a class
                of it is not importable in this process).
            OSError (or whatever else it was): writing the bookkeeping of a Ray job sent before
                it was written failed, and the job was withdrawn without running; every call
                on the job that reads its state raises it.
        """
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not timeout >= 0  # NaN too: it would compare as never reached, waiting forever
        ):
            raise InvalidArgumentError(
                f"timeout must be a number of seconds >= 0 or None (wait until the job ends), "
                f"got {timeout!r}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.record()
            status = record.effective()
            if status.is_final:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"job {self.id} is still {status.value} after {timeout} s")
            time.sleep(WAIT_POLL_S)
        if status is not JobStatus.SUCCEEDED:
            error = record.error or (
                "its supervisor process died" if status is JobStatus.KILLED else status.value
            )
            raise JobFailedError(self.id, status.value, error, record.traceback)
        result_file = self._folder.attempt_dir(record.attempt) / "result.pkl"
        if not result_file.is_file():
            return None
        try:
            return pickle.loads(result_file.read_bytes())
        except Exception as exc:  # unpickling runs any import the result's classes need
            raise ComputeError(
                f"job {self.id} succeeded, but its result cannot be loaded in this process: "
                f"{type(exc).__name__}: {exc} (a class in it may come from a package only the "
                f"job's environment has); the pickled result is {result_file}"
            ) from exc

    def logs(self) -> str:
        """Everything the job has printed so far (stdout and stderr of every attempt)."""
        self._settle()
        try:
            return self._folder.log_file.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def follow(self, poll: float = 0.2) -> Iterator[str]:
        """Yield the job's output as it is printed, until the job ends."""
        self._settle()
        offset = 0
        while True:
            final = self.status.is_final
            try:
                with open(self._folder.log_file, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                yield chunk.decode("utf-8", "replace")
            elif final:
                return
            else:
                time.sleep(poll)

    def cancel(self) -> None:
        """Ask the job to stop: a queued job never starts, a running one is terminated. Its
        status becomes cancelled; a job that has ended already keeps its status."""
        if self.status.is_final:
            return
        self._folder.request_cancel()


def get_job(location: str, job_id: str) -> Job:
    """The job ``job_id`` (or a unique prefix) of the lake at ``location``.

    Raises:
        JobNotFoundError: no such job.
    """
    from compute.bookkeeping import flush

    flush()
    return Job(JobStore.for_location(location).folder(job_id))


def list_jobs(location: str) -> list[Job]:
    """Every job submitted on the lake at ``location``, oldest first."""
    from compute.bookkeeping import flush

    flush()
    return [Job(f) for f in JobStore.for_location(location).folders()]
