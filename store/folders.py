"""Moving whole folders in and out of a lake in few, large operations.

Import (:func:`scan` then :func:`upload`) never leaves the folder it was given unless asked to:
links that point outside it, dangling links and special files are skipped and reported.
Export (:func:`export`) treats a prefix as a folder, checks every name before it writes, writes
each file through a unique temporary name and renames them into place only when all are
written, so an export that fails leaves no half-written file behind.

Neither ever touches a lake folder (one holding ``flowlake.json`` and ``refs.db``), as git never
imports ``.git``: an import skips lake folders it meets and refuses to start in one; an export
into one is refused before anything is written (:class:`~store.errors.LakeFolderError`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from store.backend import Backend
from store.errors import (
    InvalidArgumentError,
    InvalidPathError,
    LakeFolderError,
    ObjectNotFoundError,
    PathClashError,
)
from store.model import ObjectInfo
from store.names import validate_path

#: Files up to this size are read whole and written in batches; larger ones stream.
SMALL_FILE = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 5000
CHUNK = 4 << 20

#: Prefix and suffix of the temporary files an export writes before renaming them into place.
TMP_PREFIX = ".flowlake-"
TMP_SUFFIX = ".part"

#: The files that make a local folder an embedded lake: its configuration and its refs database
#: (``store.backends.embedded``). Both must be there: a data folder may hold a ``flowlake.json``.
LAKE_MARKERS = ("flowlake.json", "refs.db")


class SkippedPathsWarning(UserWarning):
    """An import skipped links or special files (see :attr:`FolderUpload.skipped`)."""


@dataclass(frozen=True)
class LocalFile:
    """One regular file found under an imported folder.

    Attributes:
        rel: its path relative to the folder, ``/``-separated.
        path: the local path to open.
        size: its size in bytes when scanned.
        via_link: True when reached through a symbolic link (opened following it).
    """

    rel: str
    path: str
    size: int
    via_link: bool = False


@dataclass(frozen=True)
class Skipped:
    """A local path an import left out, and why (a link leaving the folder, a dangling link,
    a link loop, or something that is not a regular file)."""

    path: str
    reason: str


@dataclass(frozen=True)
class LocalFolder:
    """What :func:`scan` found: the files to import, sorted by ``rel``, what it skipped, and
    the lake folders it left out (``rel`` paths, sorted)."""

    files: tuple[LocalFile, ...]
    skipped: tuple[Skipped, ...]
    lake_folders: tuple[str, ...] = ()


@dataclass(frozen=True)
class FolderUpload:
    """What an import wrote.

    Attributes:
        files: how many objects were written.
        bytes: their total size in bytes.
        skipped: local paths left out (links, special files), sorted by path.
        lake_folders: lake folders left out (paths relative to the imported folder, sorted);
            flowlake's own files are never imported, as git never imports ``.git``.
    """

    files: int
    bytes: int
    skipped: tuple[Skipped, ...] = ()
    lake_folders: tuple[str, ...] = ()


def is_lake_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding an embedded lake (both :data:`LAKE_MARKERS`)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in LAKE_MARKERS)


class LakeFolders:
    """Finds the lake folder holding a local path, remembering every folder it has looked at.

    Args:
        own: folders to treat as lake folders whatever they hold (the open lake's root).
    """

    def __init__(self, own: Iterable[str | os.PathLike[str]] = ()) -> None:
        self._own = {os.path.realpath(path) for path in own}
        self._memo: dict[str, str | None] = {}

    def holding(self, path: str | os.PathLike[str]) -> str | None:
        """The lake folder that is ``path`` or one of its ancestors (links resolved), or None."""
        current = os.path.realpath(path)
        walked: list[str] = []
        while True:
            if current in self._memo:
                found = self._memo[current]
                break
            walked.append(current)
            if current in self._own or is_lake_folder(current):
                found = current
                break
            parent = os.path.dirname(current)
            if parent == current:
                found = None
                break
            current = parent
        for folder in walked:
            self._memo[folder] = found
        return found

    def refuse(self, paths: Iterable[str | os.PathLike[str]], action: str) -> None:
        """Raise LakeFolderError naming the lake folder when one of ``paths`` lies in one.

        Raises:
            LakeFolderError: ``action`` (``"export to"``, ``"import"``) would touch a lake's own
                files; the message names the path and the lake folder.
        """
        for path in paths:
            lake = self.holding(path)
            if lake is not None:
                where = "is" if os.path.realpath(path) == lake else "lies in"
                raise LakeFolderError(
                    f"cannot {action} {os.fspath(path)!r}: it {where} the lake folder {lake!r}; "
                    "a lake's own files are never read or written as data"
                )


def scan(
    local_dir: str | os.PathLike[str],
    follow_symlinks: bool = False,
    own_lakes: Iterable[str | os.PathLike[str]] = (),
) -> LocalFolder:
    """Every regular file under ``local_dir``, and what was skipped.

    Without ``follow_symlinks`` a symbolic link is followed only when its target lies inside
    ``local_dir``; links that leave it are skipped, so no file outside the folder is ever read.
    With ``follow_symlinks`` every link is followed. Either way dangling links, links that lead
    back into a folder being walked (loops), fifos, sockets and devices are skipped.

    Lake folders (see :func:`is_lake_folder`; ``own_lakes`` count as lake folders too) are never
    walked: one met on the way, or a link to one, is left out and listed in ``lake_folders``; a
    link to something inside one is skipped.

    Raises:
        NotADirectoryError: ``local_dir`` is not a folder.
        LakeFolderError: ``local_dir`` is a lake folder or lies in one (nothing is read).
    """
    root = os.path.realpath(os.fspath(local_dir))
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{os.fspath(local_dir)!r} is not a folder")
    lakes = LakeFolders(own_lakes)
    lakes.refuse([local_dir], "import")
    own_keys = _folder_keys(own_lakes)
    files: list[LocalFile] = []
    skipped: list[Skipped] = []
    lake_folders: list[str] = []
    top = os.stat(root)
    # Each pending folder carries the (device, inode) of the folders above it: a link to one
    # of those is a loop.
    pending: list[tuple[str, str, frozenset[tuple[int, int]], bool]] = [
        (root, "", frozenset({(top.st_dev, top.st_ino)}), False)
    ]
    while pending:
        folder, rel_folder, above, linked = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = f"{rel_folder}{entry.name}"
                if entry.is_symlink():
                    lake = lakes.holding(entry.path) if _resolves(entry.path) else None
                    if lake is None:
                        found = (files, skipped, pending)
                        _scan_link(entry, rel, root, follow_symlinks, above, *found)
                    elif lake == os.path.realpath(entry.path):
                        lake_folders.append(rel)
                    else:
                        skipped.append(Skipped(rel, f"link into the lake folder {lake!r}"))
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    key = (info.st_dev, info.st_ino)
                    if key in own_keys or is_lake_folder(entry.path):
                        lake_folders.append(rel)
                        continue
                    pending.append((entry.path, rel + "/", above | {key}, linked))
                elif stat.S_ISREG(info.st_mode):
                    files.append(LocalFile(rel, entry.path, info.st_size, linked))
                else:
                    skipped.append(Skipped(rel, "not a regular file"))
    files.sort(key=lambda f: f.rel)
    skipped.sort(key=lambda s: s.path)
    return LocalFolder(tuple(files), tuple(skipped), tuple(sorted(lake_folders)))


def _folder_keys(folders: Iterable[str | os.PathLike[str]]) -> frozenset[tuple[int, int]]:
    """The (device, inode) of each existing folder among ``folders``."""
    keys = set()
    for folder in folders:
        with contextlib.suppress(OSError):
            info = os.stat(folder)
            keys.add((info.st_dev, info.st_ino))
    return frozenset(keys)


def _resolves(path: str) -> bool:
    """Whether the link at ``path`` leads to something (not dangling, not a loop of links)."""
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _scan_link(
    entry: os.DirEntry[str],
    rel: str,
    root: str,
    follow_symlinks: bool,
    above: frozenset[tuple[int, int]],
    files: list[LocalFile],
    skipped: list[Skipped],
    pending: list[tuple[str, str, frozenset[tuple[int, int]], bool]],
) -> None:
    target = os.path.realpath(entry.path)
    try:
        info = os.stat(entry.path)
    except OSError:
        skipped.append(Skipped(rel, f"dangling link (to {os.readlink(entry.path)!r})"))
        return
    if not follow_symlinks and os.path.commonpath([root, target]) != root:
        skipped.append(
            Skipped(rel, f"link to {target!r} leaves the folder (follow_symlinks to import it)")
        )
        return
    if stat.S_ISDIR(info.st_mode):
        key = (info.st_dev, info.st_ino)
        if key in above:
            skipped.append(Skipped(rel, f"link loop (to {target!r}, a folder above it)"))
            return
        pending.append((entry.path, rel + "/", above | {key}, True))
    elif stat.S_ISREG(info.st_mode):
        files.append(LocalFile(rel, entry.path, info.st_size, True))
    else:
        skipped.append(Skipped(rel, "link to something that is not a regular file"))


def upload(
    backend: Backend,
    branch: str,
    folder: LocalFolder,
    prefix: str,
    progress: Callable[[int], None] | None = None,
) -> FolderUpload:
    """Write the scanned files to ``branch`` below the folder ``prefix``.

    Paths are validated before anything is written, so a bad name leaves the branch unchanged.

    Raises:
        InvalidPathError: a file's path in the lake is not valid.
        OSError: a file cannot be read (files written before stay uncommitted on the branch).
        BranchNotFoundError, ProtectedBranchError.
    """
    planned = [(_join(prefix, f.rel), f) for f in folder.files]
    for path, _ in planned:
        validate_path(path)
    batch: list[tuple[str, bytes]] = []
    batch_bytes = total = 0
    for path, local in planned:
        with _open_local(local) as f:
            if local.size > SMALL_FILE:
                total += backend.put(branch, path, f).size
                _tick(progress, 1)
                continue
            data = f.read()
        batch.append((path, data))
        batch_bytes += len(data)
        total += len(data)
        if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
            backend.put_many(branch, batch)
            _tick(progress, len(batch))
            batch, batch_bytes = [], 0
    if batch:
        backend.put_many(branch, batch)
        _tick(progress, len(batch))
    return FolderUpload(len(planned), total, folder.skipped, folder.lake_folders)


def _open_local(local: LocalFile) -> BinaryIO:
    # A file that was not a link when scanned is opened without following links, so swapping
    # it for a link after the scan cannot smuggle an outside file in.
    flags = os.O_RDONLY | (0 if local.via_link else getattr(os, "O_NOFOLLOW", 0))
    return cast(BinaryIO, os.fdopen(os.open(local.path, flags), "rb"))


def folder_prefix(prefix: str) -> str:
    """A listing prefix as a folder: ``"data"`` and ``"data/"`` both give ``"data/"``; ``""``
    stays ``""`` (the whole lake)."""
    stripped = prefix.rstrip("/")
    return f"{stripped}/" if stripped else ""


def export(
    backend: Backend,
    ref: str,
    entries: Iterable[ObjectInfo],
    prefix: str,
    local_dir: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
    own_lakes: Iterable[str | os.PathLike[str]] = (),
) -> int:
    """Write the objects under the folder ``prefix`` to ``local_dir``; returns the count.

    Objects outside the folder (``data2/`` for ``data``) are ignored. Every name is checked
    before anything is written; files are written under unique temporary names and renamed into
    place once all are complete. On any error the temporary files and the folders the export
    created are removed, so the local folder holds no partial file.

    Raises:
        PathClashError: an object is also a folder of others (``d/a`` and ``d/a/b``), or a
            local file or folder of the other kind is in the way.
        InvalidArgumentError: ``prefix`` names an object and no folder.
        InvalidPathError: an object's name cannot be a local path.
        LakeFolderError: ``local_dir``, or a folder a file would go to, is a lake folder or
            lies in one (``own_lakes`` count as lake folders too).
        CorruptObjectError, ObjectNotFoundError: as :meth:`Backend.open_read`.
        OSError: the local disk refused a write.
    """
    folder = folder_prefix(prefix)
    chosen = [info for info in entries if info.path.startswith(folder)]
    if not chosen and folder:
        _refuse_object_as_folder(backend, ref, folder[:-1])
    rels = [_local_rel(info.path, folder) for info in chosen]
    _check_clashes([info.path for info in chosen])
    root = Path(local_dir)
    targets = [root.joinpath(*rel.split("/")) for rel in rels]
    # Every folder a file goes to, not only local_dir: exporting "" into a project folder
    # would otherwise overwrite lake/refs.db with an object of that name.
    parents = sorted({target.parent for target in targets} - {root})
    LakeFolders(own_lakes).refuse([root, *parents], "export to")
    _check_local(root, targets)
    taken = {os.path.abspath(t) for t in targets}
    written: list[tuple[str, Path]] = []
    created: list[Path] = []
    renamed = 0
    try:
        for info, target in zip(chosen, targets, strict=True):
            created.extend(_make_parents(target.parent))
            tmp = _temporary(target.parent, taken)
            written.append((tmp, target))
            with backend.open_read(ref, info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
            _tick(progress, 1)
        for tmp, target in written:
            os.replace(tmp, target)
            renamed += 1
    except BaseException:
        for tmp, _ in written[renamed:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for made in reversed(created):
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    return len(chosen)


def own_lake_folders(location: str) -> tuple[str, ...]:
    """The local lake folder of a lake opened at ``location``: none for a URL (lakeFS)."""
    return () if "://" in location else (location,)


def _refuse_object_as_folder(backend: Backend, ref: str, path: str) -> None:
    """Raise InvalidArgumentError when ``path``, exported as a folder, is an object."""
    try:
        backend.stat(ref, path)
    except ObjectNotFoundError:
        return
    raise InvalidArgumentError(f"{path!r} is an object, not a folder: read it as a file instead")


def _local_rel(path: str, folder: str) -> str:
    rel = path[len(folder) :]
    try:
        return validate_path(rel)
    except InvalidPathError:
        raise InvalidPathError(f"object {path!r} cannot be exported as a local file") from None


def _check_clashes(paths: Sequence[str]) -> None:
    """Raise PathClashError when one object's path is a folder of another's."""
    known = set(paths)
    for path in sorted(paths):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in known:
                raise PathClashError(
                    f"object {parent!r} is also a folder (it holds {path!r}); both cannot be "
                    "exported as local files, so nothing was written"
                )


def _check_local(root: Path, targets: Sequence[Path]) -> None:
    """Raise PathClashError when a target is an existing folder or a parent is a file."""
    if root.exists() and not root.is_dir():
        raise PathClashError(f"{os.fspath(root)!r} exists and is not a folder")
    seen: set[Path] = set()
    for target in targets:
        if target.is_dir():
            raise PathClashError(f"{os.fspath(target)!r} is a local folder; cannot write a file")
        parent = target.parent
        while parent != root and parent not in seen:
            seen.add(parent)
            if parent.exists() and not parent.is_dir():
                raise PathClashError(f"{os.fspath(parent)!r} is a local file, not a folder")
            parent = parent.parent


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns the ones created, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir()
    return list(reversed(missing))


def _temporary(folder: Path, taken: set[str]) -> str:
    """A new, empty file in ``folder`` whose name no exported object will take."""
    while True:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
        os.close(fd)
        if name not in taken:
            return name
        os.unlink(name)  # pragma: no cover - a random name equal to an object's name


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.rstrip('/')}/{rel}" if prefix else rel


def _tick(progress: Callable[[int], None] | None, n: int) -> None:
    if progress is not None:
        progress(n)
