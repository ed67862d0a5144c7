"""Frozen values the store hands out: commits, changes, object info, branch info."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

MergeStrategy = Literal["source-wins", "dest-wins"]
MERGE_STRATEGIES: tuple[str, ...] = ("source-wins", "dest-wins")
#: Commit metadata key prefixes kept for flowlake and lakeFS (hidden on read); refused in user
#: metadata on every backend.
RESERVED_METADATA_PREFIXES: tuple[str, ...] = ("flowlake.", ".lakefs.")


class ChangeKind(StrEnum):
    """How a path differs between two states."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Change:
    """One path that differs between two states of a lake."""

    path: str
    kind: ChangeKind

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ChangeKind):
            object.__setattr__(self, "kind", ChangeKind(self.kind))


@dataclass(frozen=True)
class Commit:
    """An immutable commit.

    Attributes:
        id: the commit id (hex), unique in the lake.
        message: the commit message.
        metadata: string key/value pairs given at commit time (read-only mapping).
        parents: parent commit ids; two for a merge commit, none for the first commit.
        timestamp: when the commit was made (UTC).
        committer: who made it (the login or namespace owner).
    """

    id: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    committer: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "parents", tuple(self.parents))

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Commit) and other.id == self.id


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object at one ref.

    Attributes:
        path: the object's path in the lake.
        size: its size in bytes.
        checksum: the content hash the backend keeps (BLAKE3 hex on the embedded backend).
        mtime: when it was written (UTC).
    """

    path: str
    size: int
    checksum: str
    mtime: datetime | None = None


@dataclass(frozen=True)
class BranchInfo:
    """A branch as listed: its user-facing name, namespace, head commit and protection."""

    name: str
    namespace: str
    head: str
    protected: bool = False
