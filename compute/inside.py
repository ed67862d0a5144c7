"""Inside a job: :func:`context` and what it gives the job's code.

Light on purpose: the runner imports it before the job's first line, so the store (pyarrow)
is imported only when the code asks for ``ctx.lake``, ``ctx.run`` or ``ctx.branch``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from compute.errors import NotInJobError

if TYPE_CHECKING:
    from store.branch import Branch
    from store.lake import Lake
    from tracking.run import Run


class JobVersioning(Protocol):
    """What a job's context opens on first use: its lake and its tracking run.

    The runner starts the run (its branch, record and tags) only when the job's code first asks
    for it, or when the code has returned, so that nothing but the code's own imports stands
    between a submit and the code's first line.
    """

    def lake(self) -> Lake:
        """The lake, reads pinned to the input commit."""

    def run(self) -> Run:
        """The attempt's tracking run, started on the first call."""

    def branch(self) -> Branch:
        """A handle on the run's branch (starts the run)."""


@dataclass(frozen=True)
class JobContext:
    """What a running job knows about itself.

    ``lake``, ``run``, ``output_branch`` and ``branch`` are opened on first use (the run's
    branch is created then), so a job pays for the lake and its run only once it uses them.

    Attributes:
        input_commit: the full id of the commit the job was pinned to at submit.
        target_branch: the branch the job's outputs are merged into when it succeeds.
        job_id: the job's id.
        attempt: 1 for the first attempt, then 2, 3, ... on retries.
        gpus: the device ids this job was given (also in ``CUDA_VISIBLE_DEVICES``).
    """

    input_commit: str
    target_branch: str
    job_id: str
    attempt: int
    gpus: tuple[int, ...]
    versioning: JobVersioning = field(repr=False, compare=False)

    @property
    def lake(self) -> Lake:
        """The lake, in the submitter's namespace; reads without a ref read
        :attr:`input_commit`."""
        return self.versioning.lake()

    @property
    def run(self) -> Run:
        """The tracking run recording this attempt."""
        return self.versioning.run()

    @property
    def output_branch(self) -> str:
        """The full name of the branch the job writes to: its own run branch (a successful
        job's writes are merged from there into :attr:`target_branch`)."""
        return self.run.run_branch

    @property
    def branch(self) -> Branch:
        """A handle on :attr:`output_branch`."""
        return self.versioning.branch()


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "flowlake_job_context", default=None
)


def context() -> JobContext:
    """The context of the job this code runs in.

    Raises:
        NotInJobError: not called from inside a flowlake job.
    """
    ctx = _current.get()
    if ctx is None:
        raise NotInJobError(
            "compute.context() works only inside a job started with compute.submit "
            "or `flowlake run`"
        )
    return ctx


def activate(ctx: JobContext) -> Any:
    """Make ``ctx`` what :func:`context` returns in this process (used by the runner)."""
    return _current.set(ctx)
