"""Inside a job: :func:`context` and the pinned view of the lake a job reads through."""

from __future__ import annotations

import builtins
import contextvars
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

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


@dataclass(frozen=True)
class JobContext:
    """What a running job knows about itself.

    Attributes:
        lake: the lake, in the submitter's namespace; reads without a ref read
            :attr:`input_commit`.
        input_commit: the full id of the commit the job was pinned to at submit.
        output_branch: the full name of the branch the job writes to (its own run branch; a
            successful job's writes are merged from there into the branch it was submitted
            for, :attr:`target_branch`).
        target_branch: the branch the job's outputs are merged into when it succeeds.
        branch: a handle on :attr:`output_branch`.
        run: the tracking run recording this attempt.
        job_id: the job's id.
        attempt: 1 for the first attempt, then 2, 3, ... on retries.
        gpus: the device ids this job was given (also in ``CUDA_VISIBLE_DEVICES``).
    """

    lake: Lake
    input_commit: str
    output_branch: str
    target_branch: str
    branch: Branch
    run: Run
    job_id: str
    attempt: int
    gpus: tuple[int, ...]


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
