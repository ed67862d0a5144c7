"""Errors of the compute layer, rooted in the store's one hierarchy.

``except store.errors.StoreError`` still catches everything flowlake raises.
"""

from __future__ import annotations

from store.errors import InvalidArgumentError, NotFoundError, StoreError


class ComputeError(StoreError):
    """Root of the errors only the compute layer raises."""


class JobFailedError(ComputeError, RuntimeError):
    """A job failed, timed out, was cancelled or was killed.

    Attributes:
        job_id: the job.
        status: its final status (``failed``, ``cancelled`` or ``killed``).
        remote_traceback: the traceback text the job printed (for a job stopped from outside,
            the end of its log), or None.
    """

    def __init__(
        self, job_id: str, status: str, message: str, remote_traceback: str | None = None
    ) -> None:
        text = f"job {job_id} {status}: {message}"
        if remote_traceback:
            # A job stopped from outside (cancelled, timed out, killed) has no traceback of its
            # own: what it is given is the end of its log.
            label = (
                "remote traceback"
                if "Traceback (most recent call last)" in remote_traceback
                else "end of the job's log"
            )
            text = f"{text}\n\n{label}:\n{remote_traceback.rstrip()}"
        super().__init__(text)
        self.job_id, self.status, self.remote_traceback = job_id, status, remote_traceback


class JobNotFoundError(ComputeError, NotFoundError):
    """No job with that id (or unique prefix) on this lake."""


class ResourceError(ComputeError, InvalidArgumentError):
    """Resources that are negative, malformed, or more than the machine or cluster has."""


class NotInJobError(ComputeError, RuntimeError):
    """``compute.context()`` was called outside a running job."""


class EnvironmentBuildError(ComputeError, RuntimeError):
    """The job's environment could not be resolved or built; the message is uv's."""


class JobTimeoutError(ComputeError, TimeoutError):
    """``Job.wait(timeout=...)`` returned before the job ended (the job goes on)."""
