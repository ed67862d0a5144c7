"""``FlowlakeFileSystem``: fsspec's filesystem interface over a flowlake lake.

A thin translation: every call parses a ``flowlake://<ref>/<path>`` URL (:mod:`store.url.address`),
resolves the ref with :meth:`store.Lake.resolve` / :meth:`store.Lake.get_branch`, and calls the
public store API (``Lake.stat/open/list``, ``Branch.write_file/write_bytes/write_many/delete``,
``Branch.transact``). Folders are implicit, as on object stores: a folder exists while an object
lies under it, ``mkdir`` does nothing, and removing a folder's last object removes the folder.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, TypeVar

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem
from fsspec.utils import isfilelike, stringify_path

import store
from store import folders
from store.branch import Branch
from store.errors import (
    BranchNotFoundError,
    InvalidNameError,
    ObjectNotFoundError,
    ReadOnlyRefError,
    UnsupportedOperationError,
)
from store.model import ObjectInfo
from store.url.address import SCHEME, LakeURL, branch_ref
from store.url.files import CHUNK, FlowlakeFile
from store.url.transaction import FlowlakeTransaction

#: Files up to this size are gathered by ``put`` and written in batches.
SMALL_FILE = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 5000
#: Bounds of the caches of reads at tags and commits (they never change).
RESOLVED_REFS = 1024
STATS = 8192
LISTINGS = 32
LISTING_ENTRIES = 100_000
#: fsspec's own options, which are not the lake's.
_FSSPEC_OPTIONS = (
    "use_listings_cache",
    "listings_expiry_time",
    "max_paths",
    "asynchronous",
    "loop",
)

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """A least-recently-used mapping of at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class _Target:
    """What a URL's ref reads.

    Attributes:
        read: the ref given to the store's reads: a namespace-qualified branch name (its
            uncommitted changes visible; the store reads it without a lookup) or a commit id.
        mutable: True for a branch, False for a commit (a tag, a commit id, ``ref~N``).
    """

    read: str
    mutable: bool


class FlowlakeFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec filesystem for ``flowlake://<ref>/<path>`` URLs (see :mod:`store.url.address`).

    Args:
        lake: the lake: a folder (embedded) or ``lakefs://<repository>``. Default:
            ``$FLOWLAKE_LAKE``, else ``./lake``. A missing embedded lake is not created unless
            ``create=True``.
        namespace: the namespace bare branch names are looked up in after production
            (default: the user's own, as :func:`store.open`).
        user: the login commits are attributed to (default: :func:`store.current_user`).
        **options: passed to :func:`store.open`: ``endpoint``, ``access_key_id``,
            ``secret_access_key`` (lakeFS; else ``LAKECTL_*`` or ``~/.lakectl.yaml``),
            ``objects``, ``storage_options`` (embedded), ``create``. fsspec's own options
            (``use_listings_cache``, ...) are accepted and passed to fsspec.

    Reads at a branch see its uncommitted changes; reads at a tag, a commit or ``ref~N`` are
    immutable, and their ref resolutions, stats and listings are cached (bounded; cleared by
    :meth:`invalidate_cache` with no argument). Writes go to a branch, staged and uncommitted,
    unless inside ``with fs.transaction:``, which commits them as one commit.

    Raises:
        LakeNotFoundError: no lake at ``lake``.
        NotInstalledError: the lakeFS extra is missing for ``lakefs://``.
    """

    protocol = SCHEME
    root_marker = ""
    transaction_type = FlowlakeTransaction

    def __init__(
        self,
        lake: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        user: str | None = None,
        **options: Any,
    ) -> None:
        fsspec_options = {k: options.pop(k) for k in _FSSPEC_OPTIONS if k in options}
        super().__init__(**fsspec_options)
        location = lake if lake is not None else os.environ.get("FLOWLAKE_LAKE") or "./lake"
        options.setdefault("create", False)
        self.lake = store.open(location, namespace, user=user, **options)
        self._closer = weakref.finalize(self, self.lake.close)
        self._commits: _Bounded[str, str] = _Bounded(RESOLVED_REFS)
        self._branches: _Bounded[str, Branch] = _Bounded(RESOLVED_REFS)
        self._stats: _Bounded[tuple[str, str], ObjectInfo] = _Bounded(STATS)
        self._listings: _Bounded[tuple[str, str], list[ObjectInfo]] = _Bounded(LISTINGS)
        self._batch: _Batch | None = None

    def close(self) -> None:
        """Close the lake now rather than when the filesystem is garbage-collected.

        fsspec's instance cache forgets this filesystem, so ``fsspec.filesystem`` with the
        same options then opens the lake again instead of handing out the closed one.
        """
        cache = type(self)._cache
        if cache.get(self._fs_token) is self:
            del cache[self._fs_token]
        self._closer()

    # -- refs ------------------------------------------------------------------------------------

    def _target(self, ref: str) -> _Target:
        """Resolve a URL's ref to a branch or a commit, in the store's order.

        A namespace-qualified branch costs no lookup here (the store checks it exists when a
        read finds nothing); a bare name costs the store's branch lookup; a tag or commit is
        resolved once and remembered.

        Raises:
            InvalidNameError, RefNotFoundError, AmbiguousRefError.
        """
        cached = self._commits.get(ref)
        if cached is not None:
            return _Target(cached, mutable=False)
        base, tilde, _ = ref.partition("~")
        qualified: str | None = None
        if not tilde:
            if "/" in ref:
                qualified = ref
            else:
                branch = self._branch_or_none(ref)
                qualified = branch_ref(branch) if branch is not None else None
        if qualified is not None:
            if self._intrans:
                qualified = self.transaction.reading(qualified)
            return _Target(qualified, mutable=True)
        commit = self.lake.resolve(ref)
        if not tilde or ("/" not in base and self._branch_or_none(base) is None):
            self._commits.put(ref, commit)
        return _Target(commit, mutable=False)

    def _branch_or_none(self, ref: str) -> Branch | None:
        """The branch ``ref`` names, or None when it names no branch. Found branches are
        remembered: the store refuses names that would give a ref another meaning later."""
        known = self._branches.get(ref)
        if known is not None:
            return known
        # The store reads a full commit id as that commit before any branch name.
        full_id = len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)
        if full_id and self.lake.resolve(ref) == ref:
            return None
        try:
            branch = self.lake.get_branch(ref)
        except (BranchNotFoundError, InvalidNameError):
            return None
        self._branches.put(ref, branch)
        return branch

    def _writable(self, url: LakeURL) -> Branch:
        """The branch a write to ``url`` goes to (the transaction's scratch branch inside one).

        Raises:
            ReadOnlyRefError: the ref is a tag, a commit or ``ref~N``.
            BranchNotFoundError / RefNotFoundError: nothing has that name.
            InvalidNameError: the ref is malformed.
        """
        branch = None if "~" in url.ref else self._branch_or_none(url.ref)
        if branch is None:
            commit = self.lake.resolve(url.ref)  # raises when nothing has that name
            raise ReadOnlyRefError(
                f"{url}: {url.ref!r} names commit {commit[:12]}, not a branch; tags and commits "
                "are read-only, write to a branch"
            )
        return self.transaction.writing(branch) if self._intrans else branch

    # -- reading primitives ----------------------------------------------------------------------

    def _stat(self, target: _Target, path: str) -> ObjectInfo:
        if target.mutable:
            return self.lake.stat(path, ref=target.read)
        key = (target.read, path)
        info = self._stats.get(key)
        if info is None:
            info = self.lake.stat(path, ref=target.read)
            self._stats.put(key, info)
        return info

    def _list(self, target: _Target, prefix: str) -> list[ObjectInfo]:
        if target.mutable:
            return self.lake.list(ref=target.read, prefix=prefix)
        key = (target.read, prefix)
        listing = self._listings.get(key)
        if listing is None:
            listing = self.lake.list(ref=target.read, prefix=prefix)
            if len(listing) <= LISTING_ENTRIES:
                self._listings.put(key, listing)
        return listing

    def _stream(self, target: _Target, path: str) -> BinaryIO:
        return self.lake.open(path, ref=target.read)

    def _commit_of(self, target: _Target) -> str:
        return self.lake.resolve(target.read) if target.mutable else target.read

    def _file_info(self, url: LakeURL, info: ObjectInfo, commit: str) -> dict[str, Any]:
        return {
            "name": url.child(info.path).name,
            "size": info.size,
            "type": "file",
            "checksum": info.checksum,
            "mtime": info.mtime,
            "commit": commit,
        }

    @staticmethod
    def _dir_info(url: LakeURL, path: str, commit: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": url.child(path).name, "size": 0, "type": "directory"}
        if commit is not None:
            out["commit"] = commit
        return out

    # -- fsspec: metadata ------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``name``, ``size``, ``type`` and, for files, ``checksum`` (the content hash),
        ``mtime`` and ``commit``: the commit read at (at a branch: its head, under the
        branch's uncommitted changes).

        Raises:
            ObjectNotFoundError (a FileNotFoundError): nothing at that path.
            RefNotFoundError, InvalidNameError, InvalidPathError: a bad URL.
        """
        url = _url(path)
        target = self._target(url.ref)
        if not url.path:
            return self._dir_info(url, "", self._commit_of(target))
        try:
            found = self._stat(target, url.path)
        except ObjectNotFoundError:
            if self._list(target, url.path + "/"):
                return self._dir_info(url, url.path)
            raise
        return self._file_info(url, found, self._commit_of(target))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The files and folders directly inside a folder (or the file itself).

        Raises:
            ObjectNotFoundError (a FileNotFoundError): no object or folder there.
        """
        url = _url(path)
        target = self._target(url.ref)
        prefix = f"{url.path}/" if url.path else ""
        listing = self._list(target, prefix)
        if not listing and url.path:
            found = self.info(path)  # the file itself, or ObjectNotFoundError
            return [found] if detail else [found["name"]]
        commit = self._commit_of(target) if detail else ""
        out: dict[str, dict[str, Any]] = {}
        for obj in listing:
            rest = obj.path[len(prefix) :]
            head, sep, _ = rest.partition("/")
            child = prefix + head
            if sep:
                out.setdefault(child, self._dir_info(url, child))
            else:
                out[child] = self._file_info(url, obj, commit)
        entries = [out[k] for k in sorted(out)]
        return entries if detail else [e["name"] for e in entries]

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Every file below ``path`` (and folders with ``withdirs``), from one listing."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        url = _url(path)
        target = self._target(url.ref)
        prefix = f"{url.path}/" if url.path else ""
        listing = self._list(target, prefix)
        out: dict[str, dict[str, Any]] = {}
        if not listing and url.path:
            try:
                found = self._stat(target, url.path)
            except ObjectNotFoundError:
                return {} if detail else []
            info = self._file_info(url, found, self._commit_of(target) if detail else "")
            out[info["name"]] = info
        else:
            commit = self._commit_of(target) if detail else ""
            if withdirs and url.path:
                out[url.name] = self._dir_info(url, url.path)
            for obj in listing:
                parts = obj.path[len(prefix) :].split("/")
                if maxdepth is not None and len(parts) > maxdepth:
                    parts = parts[:maxdepth]
                    is_file = False
                else:
                    is_file = True
                if withdirs:
                    for depth in range(1, len(parts) if is_file else len(parts) + 1):
                        folder = prefix + "/".join(parts[:depth])
                        out.setdefault(url.child(folder).name, self._dir_info(url, folder))
                if is_file:
                    info = self._file_info(url, obj, commit)
                    out[info["name"]] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def isdir(self, path: str) -> bool:
        """Whether a folder is there: a ref's root, or a path some object lies under."""
        url = _url(path)
        target = self._target(url.ref)
        if not url.path:
            self._commit_of(target)  # the ref exists
            return True
        return bool(self._list(target, url.path + "/"))

    def isfile(self, path: str) -> bool:
        """Whether an object is there (one stat, no commit lookup)."""
        url = _url(path)
        if not url.path:
            return False
        try:
            self._stat(self._target(url.ref), url.path)
        except ObjectNotFoundError:
            return False
        return True

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether an object or a folder is there. A bad URL raises rather than answer False
        (fsspec's default would hide an unknown ref behind False)."""
        return self.isfile(path) or self.isdir(path)

    def checksum(self, path: str) -> str:
        """The object's content hash: equal hashes mean equal bytes (fsspec caches key on it)."""
        return str(self.info(path)["checksum"])

    def ukey(self, path: str) -> str:
        """Same as :meth:`checksum`, so ``filecache`` keeps a copy while the content holds."""
        return self.checksum(path)

    def modified(self, path: str) -> Any:
        """When the object was written (UTC datetime)."""
        return self.info(path)["mtime"]

    def invalidate_cache(self, path: str | None = None) -> None:
        """With no path, forget remembered refs (branch names and tags), stats and listings.
        Reads at a branch are never cached; reads at commits never change, so a path alone
        drops nothing."""
        if path is None:
            self._commits.clear()
            self._branches.clear()
            self._stats.clear()
            self._listings.clear()
        super().invalidate_cache(path)

    # -- fsspec: reading -------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> FlowlakeFile:
        url = _url(path)
        if mode == "rb":
            if not url.path:
                raise IsADirectoryError(f"{url} is the root of {url.ref!r}, not a file")
            target = self._target(url.ref)
            found = self._stat(target, url.path)
            return FlowlakeFile(
                self,
                url.name,
                mode,
                info=found,
                details=self._file_info(url, found, self._commit_of(target)),
                opener=lambda: self._stream(target, url.path),
                block_size=block_size,
                autocommit=autocommit,
                cache_options=cache_options,
            )
        if mode not in ("wb", "xb"):
            raise UnsupportedOperationError(
                f"mode {mode!r} is not supported: objects are written whole ('wb', 'xb') or "
                "read ('rb')"
            )
        branch = self._writable_path(url)
        if mode == "xb" and self._exists_on(branch, url.path):
            raise FileExistsError(f"{url} exists")
        path_in_lake = url.path
        return FlowlakeFile(
            self,
            url.name,
            mode,
            writer=lambda source: branch.write_file(path_in_lake, source),
            block_size=block_size,
            autocommit=autocommit,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        if start is not None or end is not None:
            return super().cat_file(path, start=start, end=end, **kwargs)  # type: ignore[no-any-return]
        url = _url(path)
        with self._stream(self._target(url.ref), self._object_path(url)) as stream:
            return stream.read()

    def get_file(
        self,
        rpath: str,
        lpath: Any,
        callback: Any = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        """Copy one object to a local file, which appears whole or not at all.

        Raises:
            LakeFolderError: ``lpath`` lies in a lake folder (nothing is written).
        """
        url = _url(rpath)
        target = self._target(url.ref)
        if isfilelike(lpath):
            with self._stream(target, self._object_path(url)) as stream:
                _copy(stream, lpath, callback)
            return
        own = folders.own_lake_folders(self.lake.location)
        folders.LakeFolders(own).refuse([os.fspath(lpath)], "export to")
        try:
            stream = self._stream(target, self._object_path(url))
        except (ObjectNotFoundError, IsADirectoryError):
            if self.isdir(rpath):
                os.makedirs(lpath, exist_ok=True)
                return
            raise
        local = os.fspath(lpath)
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".flowlake-", dir=os.path.dirname(local) or ".")
        try:
            with stream, os.fdopen(fd, "wb") as out:
                _copy(stream, out, callback)
            os.replace(tmp, local)
        except BaseException:
            os.unlink(tmp)
            raise

    # -- fsspec: writing -------------------------------------------------------------------------

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        url = _url(path)
        branch = self._writable_path(url)
        if mode == "create" and self._exists_on(branch, url.path):
            raise FileExistsError(f"{url} exists")
        branch.write_bytes(url.path, bytes(value))

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        if not truncate and self.exists(path):
            raise UnsupportedOperationError("objects have no modification time to touch")
        self.pipe_file(path, b"")

    def put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        """Write one local file (streamed; inside :meth:`put`, small files go in batches)."""
        if os.path.isdir(lpath):
            return  # folders are implicit
        url = _url(rpath)
        branch = self._writable_path(url)
        if mode == "create" and self._exists_on(branch, url.path):
            raise FileExistsError(f"{url} exists")
        size = os.path.getsize(lpath)
        callback.set_size(size)
        if self._batch is not None and size <= SMALL_FILE:
            with open(lpath, "rb") as f:
                self._batch.add(branch, url.path, f.read())
        else:
            branch.write_file(url.path, lpath)
        callback.relative_update(size)

    def put(self, lpath: Any, rpath: Any, recursive: bool = False, **kwargs: Any) -> None:
        """Copy local files in (fsspec's path rules); small files are written in batches."""
        if self._batch is not None:
            super().put(lpath, rpath, recursive=recursive, **kwargs)
            return
        with self._batched():
            super().put(lpath, rpath, recursive=recursive, **kwargs)

    @contextmanager
    def _batched(self) -> Iterator[None]:
        self._batch = _Batch()
        try:
            yield
            self._batch.flush()
        finally:
            self._batch = None

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy one object, streamed; copying a folder's own entry does nothing."""
        source = _url(path1)
        dest = _url(path2)
        branch = self._writable_path(dest)
        try:
            stream = self._stream(self._target(source.ref), self._object_path(source))
        except (ObjectNotFoundError, IsADirectoryError):
            if self.isdir(path1):
                return
            raise
        with stream:
            branch.write_file(dest.path, stream)

    def rm_file(self, path: str) -> None:
        url = _url(path)
        self._writable_path(url).delete(url.path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete objects (folders: with ``recursive``), one store call per branch.

        Every path is checked before anything is deleted.

        Raises:
            ObjectNotFoundError (a FileNotFoundError): a path names nothing.
            ReadOnlyRefError, ProtectedBranchError: not a writable branch.
        """
        expanded = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        by_ref: dict[str, list[str]] = {}
        for name in expanded:
            url = LakeURL.parse(name)
            by_ref.setdefault(url.ref, []).append(url.path)
        plans = []
        for ref, paths in by_ref.items():
            url = LakeURL(ref)
            branch = self._writable(url)
            present = sorted(o.path for o in branch.list(_common_folder(paths)))
            files = [p for p in paths if _has(present, p)]
            for p in paths:
                if not p:
                    continue
                if not _has(present, p) and not _has_under(present, p + "/"):
                    raise ObjectNotFoundError(f"no object or folder {url.child(p)}")
            plans.append((branch, files))
        for branch, files in plans:
            if files:
                branch.delete(*files)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to do: folders exist while objects lie under them."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Nothing to do: folders exist while objects lie under them."""

    def rmdir(self, path: str) -> None:
        """Nothing to do: a folder goes with its last object."""

    # -- helpers ---------------------------------------------------------------------------------

    def _writable_path(self, url: LakeURL) -> Branch:
        if not url.path:
            raise IsADirectoryError(f"{url} is the root of {url.ref!r}; name an object under it")
        return self._writable(url)

    @staticmethod
    def _object_path(url: LakeURL) -> str:
        if not url.path:
            raise IsADirectoryError(f"{url} is the root of {url.ref!r}, not a file")
        return url.path

    @staticmethod
    def _exists_on(branch: Branch, path: str) -> bool:
        return branch.exists(path)


class _Batch:
    """Small files gathered by one ``put``, written with ``Branch.write_many``."""

    def __init__(self) -> None:
        self._items: dict[Branch, list[tuple[str, bytes]]] = {}
        self._bytes = 0
        self._count = 0

    def add(self, branch: Branch, path: str, data: bytes) -> None:
        self._items.setdefault(branch, []).append((path, data))
        self._bytes += len(data)
        self._count += 1
        if self._bytes >= BATCH_BYTES or self._count >= BATCH_FILES:
            self.flush()

    def flush(self) -> None:
        items, self._items = self._items, {}
        self._bytes = self._count = 0
        for branch, batch in items.items():
            branch.write_many(batch)


def _url(path: Any) -> LakeURL:
    return LakeURL.parse(stringify_path(path))


def _copy(source: BinaryIO, dest: Any, callback: Any) -> None:
    while chunk := source.read(CHUNK):
        dest.write(chunk)
        callback.relative_update(len(chunk))


def _common_folder(paths: list[str]) -> str:
    """The deepest folder holding every path, as a listing prefix (``""`` for the root)."""
    folders = [p.rsplit("/", 1)[0] + "/" if "/" in p else "" for p in paths]
    common = os.path.commonprefix(folders)
    return common[: common.rfind("/") + 1]


def _has(sorted_paths: list[str], path: str) -> bool:
    i = bisect.bisect_left(sorted_paths, path)
    return i < len(sorted_paths) and sorted_paths[i] == path


def _has_under(sorted_paths: list[str], prefix: str) -> bool:
    i = bisect.bisect_left(sorted_paths, prefix)
    return i < len(sorted_paths) and sorted_paths[i].startswith(prefix)
