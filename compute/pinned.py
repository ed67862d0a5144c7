"""The view of the lake a job reads through: reads without a ref read the pinned input commit."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from typing import BinaryIO

import pyarrow as pa

from store.lake import Lake
from store.model import Commit, ObjectInfo
from store.names import Namespace


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
