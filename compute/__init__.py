"""Compute: jobs (GPU included) that read a pinned commit and write their own branch.

>>> import compute, store
>>> lake = store.open("./lake")                                        # doctest: +SKIP
>>> job = compute.submit(train, args={"lr": 0.1}, lake=lake,           # doctest: +SKIP
...                      input_ref="main", output_branch="lr-sweep",
...                      resources=compute.Resources(gpus=1))
>>> job.wait()                                                          # doctest: +SKIP

Inside the job, :func:`context` gives the lake (reads default to the pinned input commit), the
job's own branch and its tracking run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from compute.errors import (
    ComputeError,
    EnvironmentBuildError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    NotInJobError,
    ResourceError,
)
from compute.model import Environment, JobSpec, JobStatus, Resources

if TYPE_CHECKING:
    from compute.inside import JobContext, context
    from compute.job import Job
    from compute.submission import map, submit
    from store.lake import Lake

# Imported on first use, so that a job's supervisor (which imports this package) does not pay
# for the submitter's and the runner's imports while it waits in the queue.
_LAZY = {
    "JobContext": "compute.inside",
    "context": "compute.inside",
    "Job": "compute.job",
    "map": "compute.submission",
    "submit": "compute.submission",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compute' has no attribute {name!r}")


__all__ = [
    "ComputeError",
    "Environment",
    "EnvironmentBuildError",
    "Job",
    "JobContext",
    "JobFailedError",
    "JobNotFoundError",
    "JobSpec",
    "JobStatus",
    "JobTimeoutError",
    "NotInJobError",
    "ResourceError",
    "Resources",
    "context",
    "get_job",
    "jobs",
    "map",
    "submit",
]


def get_job(lake: Lake, job_id: str) -> Job:
    """The job ``job_id`` (or a unique prefix of at least 4 characters) of ``lake``.

    Raises:
        JobNotFoundError: no such job.
    """
    from compute.job import get_job as _get
    from compute.submission import _location

    return _get(_location(lake), job_id)


def jobs(lake: Lake, limit: int | None = None) -> list[Job]:
    """Every job submitted on ``lake`` from any process of this machine, oldest first; with
    ``limit``, only the newest ``limit`` of them (still oldest first).

    Raises:
        InvalidArgumentError: ``limit`` is not a whole number >= 1.
    """
    from compute.job import list_jobs
    from compute.submission import _location
    from store.errors import InvalidArgumentError

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidArgumentError(f"limit must be a whole number >= 1, got {limit!r}")
    found = list_jobs(_location(lake))
    return found[-limit:] if limit is not None else found
