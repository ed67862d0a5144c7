"""Inside a job: :func:`context` and the pinned view of the lake a job reads through."""

from __future__ import annotations

import builtins
import contextvars
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import pyarrow as pa

from compute.errors import NotInJobError
from store.lake import Lake
from store.model import Commit, ObjectInfo
from store.names import Namespace

if TYPE_CHECKING:
    from store.branch import Branch
    from tracking.run import Run


class PinnedLake(Lake):
    """A lake whose reads default to one commit (the job's input) instead of ``main``.

    An explicit ``ref`` reads that ref, as on any :class:`~store.Lake`.
    """

    def __init__(self, lake: Lake, pin: str) -> None:
        super().__init__(lake.backend, Namespace.parse(lake.namespace), lake.user, lake.location)
        self.pin = pin

    def __repr__(self) -> str:
        return f"PinnedLake({self.location!r}, namespace={self.namespace!r}, pin={self.pin[:12]})"

    def stat(self, path: str, ref: str | None = None) -> ObjectInfo:
        return super().stat(path, ref or self.pin)

    def exists(self, path: str, ref: str | None = None) -> bool:
        return super().exists(path, ref or self.pin)

    def open(self, path: str, ref: str | None = None) -> BinaryIO:
        return super().open(path, ref or self.pin)

    def read_bytes(self, path: str, ref: str | None = None) -> bytes:
        return super().read_bytes(path, ref or self.pin)

    def read_table(
        self, path: str, ref: str | None = None, columns: builtins.list[str] | None = None
    ) -> pa.Table:
        return super().read_table(path, ref or self.pin, columns)

    def list(self, ref: str | None = None, prefix: str = "") -> builtins.list[ObjectInfo]:
        return super().list(ref or self.pin, prefix)

    def locate(self, path: str, ref: str | None = None) -> str | None:
        return super().locate(path, ref or self.pin)

    def download_dir(
        self,
        local_dir: str | os.PathLike[str],
        ref: str | None = None,
        prefix: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> int:
        return super().download_dir(local_dir, ref or self.pin, prefix, progress)

    def log(self, ref: str | None = None, limit: int | None = None) -> builtins.list[Commit]:
        return super().log(ref or self.pin, limit)


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
