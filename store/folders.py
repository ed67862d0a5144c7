"""Moving whole folders in and out of a lake in few, large operations."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from store.backend import Backend
from store.model import ObjectInfo
from store.names import validate_path

#: Files up to this size are read whole and written in batches; larger ones stream.
SMALL_FILE = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 5000


def walk(local_dir: str | os.PathLike[str]) -> Iterator[tuple[str, str, int]]:
    """(relative posix path, absolute path, size) of every file under ``local_dir``, sorted.

    Raises:
        FileNotFoundError / NotADirectoryError: ``local_dir`` is not a folder.
    """
    root = os.fspath(local_dir)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root!r} is not a folder")
    found: list[tuple[str, str, int]] = []
    pending = [(root, "")]
    while pending:
        folder, rel_folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = f"{rel_folder}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, rel + "/"))
                elif entry.is_file():
                    found.append((rel, entry.path, entry.stat().st_size))
    return iter(sorted(found))


def upload(
    backend: Backend,
    branch: str,
    local_dir: str | os.PathLike[str],
    prefix: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every file under ``local_dir`` to ``branch`` below ``prefix``; returns the count.

    Paths are validated before anything is written, so a bad name leaves the branch unchanged.
    """
    files = [(_join(prefix, rel), full, size) for rel, full, size in walk(local_dir)]
    for path, _, _ in files:
        validate_path(path)
    batch: list[tuple[str, bytes]] = []
    batch_bytes = 0
    for path, full, size in files:
        if size > SMALL_FILE:
            with open(full, "rb") as f:
                backend.put(branch, path, f)
            _tick(progress, 1)
            continue
        with open(full, "rb") as f:
            batch.append((path, f.read()))
        batch_bytes += size
        if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
            backend.put_many(branch, batch)
            _tick(progress, len(batch))
            batch, batch_bytes = [], 0
    if batch:
        backend.put_many(branch, batch)
        _tick(progress, len(batch))
    return len(files)


def export(
    backend: Backend,
    ref: str,
    entries: Iterable[ObjectInfo],
    prefix: str,
    local_dir: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write objects to ``local_dir`` (paths relative to ``prefix``); each file appears whole."""
    root = Path(local_dir)
    count = 0
    strip = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    for info in entries:
        rel = info.path[len(strip) :] if info.path.startswith(strip) else info.path
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.flowlake-tmp")
        with backend.open_read(ref, info.path) as src, open(tmp, "wb") as dst:
            while chunk := src.read(4 << 20):
                dst.write(chunk)
        os.replace(tmp, target)
        count += 1
        _tick(progress, 1)
    return count


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.rstrip('/')}/{rel}" if prefix else rel


def _tick(progress: Callable[[int], None] | None, n: int) -> None:
    if progress is not None:
        progress(n)
