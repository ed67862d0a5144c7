"""Moving files between the local disk and a lake, with rich progress bars for large transfers.

Progress goes to standard error, so ``--json`` output on standard output stays parseable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

import store
from store import folders
from store.errors import InvalidArgumentError, ObjectNotFoundError
from store.folders import FolderUpload
from ui import render

#: Single files at least this large get a byte progress bar.
PROGRESS_MIN_BYTES = 16 << 20
CHUNK = 4 << 20


@dataclass(frozen=True)
class Transferred:
    """What one put or get moved."""

    files: int
    bytes: int


class CountingReader:
    """A read-only binary stream that reports how many bytes each read returned."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._advance(len(data))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar in bytes; yields the function that advances it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=render.stderr()) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def file_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar in files; yields the function that advances it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=render.stderr()) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def put_file(branch: store.Branch, local: Path, path: str) -> store.ObjectInfo:
    """Stream one local file to ``path`` on ``branch``; large files show a byte progress bar.

    Raises:
        StoreError: as :meth:`store.Branch.write_file`; OSError when the file cannot be read.
    """
    size = local.stat().st_size
    if size < PROGRESS_MIN_BYTES:
        return branch.write_file(path, local)
    with open(local, "rb") as raw, byte_progress(f"put {path}", size) as advance:
        return branch.write_file(path, CountingReader(raw, advance))  # type: ignore[arg-type]


def put_dir(
    branch: store.Branch, local: Path, prefix: str, follow_symlinks: bool = False
) -> FolderUpload:
    """Import a whole folder below ``prefix`` with a per-file progress bar.

    Skipped links and special files come back in the result (no Python warning is printed:
    the CLI shows them itself).

    Raises:
        StoreError: a bad file name (nothing is written then), or a store failure.
        NotADirectoryError: ``local`` is not a folder.
    """
    if not local.is_dir():
        raise NotADirectoryError(f"{local} is not a folder")
    own = folders.own_lake_folders(branch.lake.location)
    total = len(folders.scan(local, follow_symlinks=follow_symlinks, own_lakes=own).files)
    with file_progress(f"put {local}", total) as advance, warnings.catch_warnings():
        warnings.simplefilter("ignore", folders.SkippedPathsWarning)
        return branch.upload_dir(
            local, prefix=prefix, progress=advance, follow_symlinks=follow_symlinks
        )


def get_file(lake: store.Lake, path: str, ref: str, local: Path) -> Transferred:
    """Stream one object into a local file, which appears whole or not at all.

    The bytes go to a new temporary file of a unique name beside ``local`` (never an existing
    file), renamed over ``local`` once complete and removed on any error.

    Raises:
        LakeFolderError: ``local`` lies in a lake folder (nothing is written).
        StoreError: as :meth:`store.Lake.open`; OSError when the file cannot be written.
    """
    folders.LakeFolders(folders.own_lake_folders(lake.location)).refuse([local], "export to")
    size = lake.stat(path, ref).size
    fd, tmp = tempfile.mkstemp(
        prefix=folders.TMP_PREFIX, suffix=folders.TMP_SUFFIX, dir=local.parent
    )
    try:
        with os.fdopen(fd, "wb") as dst, lake.open(path, ref) as src:
            if size < PROGRESS_MIN_BYTES:
                _copy(src, dst, lambda n: None)
            else:
                with byte_progress(f"get {path}", size) as advance:
                    _copy(src, dst, advance)
        os.replace(tmp, local)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return Transferred(1, size)


def get_dir(lake: store.Lake, prefix: str, ref: str, local: Path) -> Transferred:
    """Export every object in the folder ``prefix`` at ``ref`` into a local folder, with a bar.

    Raises:
        ObjectNotFoundError: nothing is under ``prefix`` at ``ref`` (nothing is written, and no
            bar is shown).
        InvalidArgumentError: ``prefix`` is an object, not a folder (checked before the bar).
        LakeFolderError: ``local`` is a lake folder or lies in one (checked before the bar).
        StoreError: as :meth:`store.Lake.download_dir` (a clash or a bad name is reported
            before anything is written; on any error no partial file is left).
    """
    # Checked before the bar too; download_dir also checks every folder a file goes to.
    folders.LakeFolders(folders.own_lake_folders(lake.location)).refuse([local], "export to")
    entries = lake.list(ref=ref, prefix=folders.folder_prefix(prefix))
    if not entries:
        if prefix and lake.exists(prefix, ref):
            raise InvalidArgumentError(
                f"{prefix!r} at {ref} is an object, not a folder: copy it without -r"
            )
        where = f"under {folders.folder_prefix(prefix)!r} " if prefix else ""
        raise ObjectNotFoundError(f"no objects {where}at {ref}; nothing copied")
    with file_progress(f"get {prefix or ref}", len(entries)) as advance:
        count = lake.download_dir(local, ref=ref, prefix=prefix, progress=advance)
    return Transferred(count, sum(info.size for info in entries))


def _copy(src: BinaryIO, dst: BinaryIO, advance: Callable[[int], None]) -> None:
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        advance(len(chunk))
