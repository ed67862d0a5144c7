"""Frozen values the tracking layer hands out: artifacts, run records and lineage."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

RunStatus = Literal["running", "finished", "failed", "killed", "stale"]
ArtifactKind = Literal["table", "model", "file"]


@dataclass(frozen=True)
class Artifact:
    """One file a run wrote into its branch.

    Attributes:
        name: the name it was logged under.
        kind: ``table``, ``model`` or ``file``.
        path: its object path in the lake.
        size: its size in bytes.
        sha256: SHA-256 of its bytes, computed by flowlake while writing (same on every backend).
        checksum: the hash the backend keeps (BLAKE3 on the embedded backend).
    """

    name: str
    kind: str
    path: str
    size: int
    sha256: str
    checksum: str


@dataclass(frozen=True)
class RunRecord:
    """A run as recorded in its ``run.parquet``, with the status a reader should believe.

    ``status`` is the recorded one, except that a ``running`` run whose process is gone shows
    ``killed`` and one whose heartbeat stopped shows ``stale`` (see :mod:`tracking.liveness`).
    """

    run_id: str
    name: str | None
    status: str
    recorded_status: str
    run_namespace: str
    target_branch: str | None
    run_branch: str
    parent_run_id: str | None
    user: str
    host: str
    pid: int | None
    start_time: datetime
    end_time: datetime | None
    input_commit: str
    output_commit: str | None
    git_commit: str | None
    git_dirty: bool | None
    code_root: str | None
    python_version: str
    error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        """Build from a row of the ``runs`` view (extra columns are ignored)."""
        values: dict[str, Any] = {f.name: row.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True)
class Lineage:
    """Where a run's outputs came from, and what used its input.

    Attributes:
        run: the run asked about (or the run that produced the commit asked about), if any.
        commit: the commit asked about (the run's output commit when a run id was given).
        input_commit: the data commit the run started from.
        code: the run's git commit and code snapshot manifest rows ``(path, sha256)``.
        parent_runs: runs upstream of it: its explicit parent, then every run whose output is
            in the history of its input commit, newest first.
        used_by: runs that started from exactly ``commit`` (or from the run's output commit).
        downstream_runs: runs whose input commit has ``commit`` in its history.
        artifacts: what the run logged.
    """

    run: RunRecord | None
    commit: str | None
    input_commit: str | None
    git_commit: str | None
    code: tuple[tuple[str, str], ...]
    parent_runs: tuple[RunRecord, ...]
    used_by: tuple[RunRecord, ...]
    downstream_runs: tuple[RunRecord, ...]
    artifacts: tuple[Artifact, ...]
