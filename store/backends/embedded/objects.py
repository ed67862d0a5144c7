"""The content-addressed object store: immutable blobs named by the BLAKE3 hash of their content.

``ObjectStore(fs, root)`` writes through any fsspec filesystem. On a local filesystem a blob is
written to a temporary file, fsynced, renamed into place and its folder fsynced, so a reader or
a crash never sees half an object, and an object is durable once ``put_*`` returns. Inside
:meth:`ObjectStore.batch` the blobs of one thread are published together when the block ends:
their files are fsynced by parallel threads, then renamed, then each distinct folder is fsynced
once, so a batch waits on the disk about twice instead of twice per object. On remote
filesystems (s3://) the upload itself is atomic and durable.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import fsspec
import zstandard
from fsspec.implementations.local import LocalFileSystem

from store import tempfiles
from store.backends.embedded import layout
from store.errors import CorruptObjectError, ObjectNotFoundError

CHUNK = 4 << 20
#: zstd level for streamed (large) objects: level 1 compresses about 2-3x faster than the
#: default level 3 for a few percent more bytes, so a large put keeps up with the disk.
STREAM_ZSTD_LEVEL = 1
#: At most this many threads fsync one batch's files (or folders) at once; fsync releases the
#: GIL, and the file system groups concurrent fsyncs into one journal commit.
SYNC_THREADS = 8


@dataclass(frozen=True)
class StoredObject:
    """A blob in the store: its content id, content size and address (path under the root)."""

    id: str
    size: int
    address: str


class ObjectStore:
    """Content-addressed blobs under ``root`` on filesystem ``fs``."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.is_local = isinstance(fs, LocalFileSystem)
        # Per thread: a batch collects only its own thread's writes, so a write made by another
        # thread (which may reference it in SQLite at once) is never left waiting for an fsync.
        self._batches = threading.local()
        # fsync threads kept between batches: starting threads for each batch cost as much as
        # the fsyncs themselves on a busy machine. (pid, pool): a forked child makes its own.
        self._sync_pool: tuple[int, ThreadPoolExecutor] | None = None
        self._sync_pool_lock = threading.Lock()
        if self.is_local:
            os.makedirs(self._tmp_dir(), exist_ok=True)

    # -- paths -----------------------------------------------------------------------------------

    def full_path(self, addr: str) -> str:
        return f"{self.root}/{addr}"

    def url(self, addr: str) -> str:
        """A URL of the stored file that other fsspec/DuckDB readers understand."""
        path = self.full_path(addr)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _tmp_dir(self) -> str:
        return f"{self.root}/tmp"

    def close(self) -> None:
        """Stop the threads kept for fsyncs (a later write starts them again)."""
        with self._sync_pool_lock:
            held, self._sync_pool = self._sync_pool, None
        if held is not None and held[0] == os.getpid():
            held[1].shutdown(wait=True)

    def _sync_all(self, paths: list[str]) -> None:
        """fsync each path (file or folder): the first here, the others by parallel threads.

        While the interpreter exits (a run or deployment flushing from an ``atexit`` hook),
        thread pools refuse new work; the paths are then fsynced here, one after another.
        """
        rest = []
        try:
            pool = self._pool()
            rest = [pool.submit(_fsync_path, p) for p in paths[1:]]
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            for future in rest:
                future.cancel()
            rest = []
            for path in paths[1:]:
                _fsync_path(path)
        _fsync_path(paths[0])
        for future in rest:
            future.result()

    def _pool(self) -> ThreadPoolExecutor:
        with self._sync_pool_lock:
            if self._sync_pool is None or self._sync_pool[0] != os.getpid():
                pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="flowlake-fsync")
                self._sync_pool = (os.getpid(), pool)
            return self._sync_pool[1]

    # -- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Publish the blobs this thread puts inside the block together, when it ends cleanly.

        Until then they are readable by this thread only (:meth:`get_bytes`, :meth:`open`) and
        invisible to others; when the block ends every one of them is durable (file content and
        folder entry fsynced), so a reference stored after the block can never point at a
        missing object after a crash. If the block raises, none is published. A batch inside a
        batch joins the outer one. Writes of other threads are not affected.

        Raises:
            OSError: publishing failed; the objects not yet renamed into place are discarded.
        """
        if not self.is_local or getattr(self._batches, "pending", None) is not None:
            yield
            return
        pending = _Pending()
        self._batches.pending = pending
        try:
            yield
            self._batches.pending = None
            _publish_all(self, pending)
        finally:
            self._batches.pending = None
            pending.discard()

    def in_batch(self) -> bool:
        """Whether this thread is inside :meth:`batch` (its puts are published at its end)."""
        return self._pending() is not None

    def _pending(self) -> _Pending | None:
        pending: _Pending | None = getattr(self._batches, "pending", None)
        return pending

    def put_bytes(self, data: bytes, codec: str | None = None) -> StoredObject:
        """Store an in-memory content (compressed when that pays, unless ``codec`` is given)."""
        object_id = layout.content_id(data)
        pending = self._pending()
        if codec is None and self.is_local:
            # A content stored before is found without choosing its codec again (that costs a
            # trial compression): the choice is deterministic, so it sits under one of the two.
            for candidate in (layout.RAW, layout.ZSTD):
                addr = layout.address(object_id, candidate)
                if self._known(addr, pending):
                    return StoredObject(object_id, len(data), addr)
        codec = layout.choose_codec(data[: 1 << 20]) if codec is None else codec
        addr = layout.address(object_id, codec)
        if not self._known(addr, pending):
            self._publish_bytes(layout.encode(data, codec), addr, pending)
        return StoredObject(object_id, len(data), addr)

    def _known(self, addr: str, pending: _Pending | None) -> bool:
        """Whether the blob is stored or held by this thread's batch (stored: mtime refreshed)."""
        return (pending is not None and addr in pending.temps) or self._exists_touch(addr)

    def put_stream(self, source: BinaryIO, first: bytes = b"") -> StoredObject:
        """Store a stream without holding it in memory. ``first`` is data already read from it."""
        sample = first + _read_full(source, CHUNK - len(first)) if len(first) < CHUNK else first
        codec = layout.choose_codec(sample[: 1 << 20])
        h = layout.hasher()
        size = 0
        with _TempWriter(self) as temp:
            compressor = None
            if codec == layout.ZSTD:
                compressor = zstandard.ZstdCompressor(level=STREAM_ZSTD_LEVEL).stream_writer(
                    temp.file, closefd=False
                )
            sink: Any = compressor if compressor is not None else temp.file
            chunk = sample
            while chunk:
                h.update(chunk)
                sink.write(chunk)
                size += len(chunk)
                chunk = source.read(CHUNK)
            if compressor is not None:
                compressor.flush(zstandard.FLUSH_FRAME)
            object_id = h.hexdigest()
            addr = layout.address(object_id, codec)
            temp.finish(None if self._exists_touch(addr) else addr)
        return StoredObject(object_id, size, addr)

    def _exists_touch(self, addr: str) -> bool:
        """True if the blob exists; its mtime is refreshed so gc's retention window protects it."""
        path = self.full_path(addr)
        if self.is_local:
            try:
                os.utime(path)
                return True
            except FileNotFoundError:
                return False
        return bool(self.fs.exists(path))

    def _publish_bytes(self, blob: bytes, addr: str, pending: _Pending | None) -> None:
        if pending is None:
            with _TempWriter(self) as temp:
                temp.file.write(blob)
                temp.finish(addr)
            return
        fd, tmp_path = tempfiles.create(self._tmp_dir())
        pending.temps[addr] = tmp_path
        with os.fdopen(fd, "wb") as f:
            f.write(blob)

    def _read_path(self, addr: str) -> str:
        """Where a blob's bytes are now: its temporary file while this thread's batch holds it."""
        pending = self._pending()
        if pending is not None and addr in pending.temps:
            return pending.temps[addr]
        return self.full_path(addr)

    # -- reading ---------------------------------------------------------------------------------

    def get_bytes(self, addr: str) -> bytes:
        """The verified content of a blob.

        Raises:
            ObjectNotFoundError: the blob is missing.
            CorruptObjectError: its bytes do not decode or do not match the id.
        """
        object_id, codec = _parse(addr)
        try:
            with self.fs.open(self._read_path(addr), "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {addr} is missing from the store") from None
        try:
            data = layout.decode(blob, codec)
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(f"object {addr} does not decode: {exc}") from None
        if layout.content_id(data) != object_id:
            raise CorruptObjectError(f"object {addr} does not match its hash")
        return data

    def open(self, addr: str) -> BinaryIO:
        """A buffered stream of a blob's content that verifies its hash when fully read.

        Raises:
            ObjectNotFoundError: the blob is missing.
            CorruptObjectError: raised by a read once the bytes are known not to match.
        """
        object_id, codec = _parse(addr)
        try:
            raw = self.fs.open(self._read_path(addr), "rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {addr} is missing from the store") from None
        stream: BinaryIO = raw
        if codec == layout.ZSTD:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(_VerifyingReader(stream, object_id, addr), buffer_size=CHUNK)

    def exists(self, addr: str) -> bool:
        return bool(self.fs.exists(self.full_path(addr)))

    # -- maintenance -----------------------------------------------------------------------------

    def iter_addresses(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as (address, modification time in epoch seconds).

        Files that vanish while the listing runs are skipped; ``tmp/`` is never listed.
        """
        if self.is_local:
            yield from self._iter_local()
            return
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return
        prefix = self.root + "/"
        for path, info in found.items():
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            if rel.startswith("tmp/"):
                continue
            try:
                _parse(rel)
            except CorruptObjectError:
                continue
            yield rel, _mtime(info)

    def _iter_local(self) -> Iterator[tuple[str, float]]:
        # Two levels of fan-out folders, then blobs; scandir, because fsspec's find stats every
        # file and fails when one (a writer's temporary file) disappears under it.
        for first in _scan(self.root):
            if first.name == "tmp" or not _is_dir(first):
                continue
            for second in _scan(first.path):
                if not _is_dir(second):
                    continue
                for blob in _scan(second.path):
                    addr = f"{first.name}/{second.name}/{blob.name}"
                    try:
                        _parse(addr)
                        mtime = blob.stat().st_mtime
                    except (CorruptObjectError, FileNotFoundError):
                        continue
                    yield addr, mtime

    def remove(self, addr: str) -> None:
        """Delete a blob; one that is gone already is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.full_path(addr))

    def clean_temp(self, older_than: float) -> int:
        """Remove temporary files (left by killed writers) older than ``older_than`` epoch secs.

        Files that vanish meanwhile (a writer finishing) are skipped, never an error.
        """
        removed = 0
        if not self.is_local:
            try:
                found = self.fs.find(self._tmp_dir(), detail=True)
            except FileNotFoundError:
                return 0
            for path, info in found.items():
                if _mtime(info) < older_than:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path)
                        removed += 1
            return removed
        for entry in _scan(self._tmp_dir()):
            try:
                if entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except FileNotFoundError:
        return False


def _parse(addr: str) -> tuple[str, str]:
    try:
        return layout.parse_address(addr)
    except ValueError as exc:
        raise CorruptObjectError(str(exc)) from None


def _mtime(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def _read_full(source: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = source.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class _TempWriter:
    """Context manager: a temporary ``file`` that ``finish(addr)`` publishes at ``addr``
    atomically on a clean exit. ``finish(None)``, no ``finish`` or an exception discard it."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.target: str | None = None
        self.done = False

    def __enter__(self) -> _TempWriter:
        if self.store.is_local:
            fd, self.tmp_path = tempfiles.create(self.store._tmp_dir())
        else:
            fd, self.tmp_path = tempfile.mkstemp()
        self.file: BinaryIO = os.fdopen(fd, "wb")
        return self

    def finish(self, addr: str | None) -> None:
        self.target, self.done = addr, True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None and self.done and self.target is not None:
                self._publish(self.target)
        finally:
            if not self.file.closed:
                self.file.close()
            if os.path.exists(self.tmp_path):
                os.unlink(self.tmp_path)

    def _publish(self, addr: str) -> None:
        store = self.store
        self.file.flush()
        if store.is_local:
            self.file.close()
            pending = _Pending({addr: self.tmp_path})
            _publish_all(store, pending)
        else:
            self.file.close()
            # Upload under a unique name, then move: readers never see a partial object.
            staging = f"{store._tmp_dir()}/{uuid.uuid4().hex}"
            store.fs.put_file(self.tmp_path, staging)
            store.fs.mv(staging, store.full_path(addr))


@dataclass
class _Pending:
    """A batch's blobs not yet published: address -> temporary file holding its bytes."""

    temps: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        for tmp_path in self.temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
        self.temps.clear()


def _publish_all(store: ObjectStore, pending: _Pending) -> None:
    """Make a batch's blobs durable at their addresses (local filesystem).

    Order: every file's content is fsynced before any rename (so an object that exists under
    its address is complete), then the renames, then one fsync of each distinct folder that
    gained an entry (the objects' folders, and the parents of fan-out folders created now).
    """
    if not pending.temps:
        return
    store._sync_all(list(pending.temps.values()))
    folders: set[str] = set()
    for addr, tmp_path in list(pending.temps.items()):
        final = store.full_path(addr)
        directory = os.path.dirname(final)
        folders.add(directory)
        folders.update(_make_dirs(directory, store.root))
        os.replace(tmp_path, final)
        del pending.temps[addr]
    store._sync_all(sorted(folders))


def _make_dirs(directory: str, root: str) -> list[str]:
    """Create ``directory`` and missing parents below ``root``; the folders that gained one."""
    if os.path.isdir(directory):
        return []
    gained: list[str] = []
    parent = os.path.dirname(directory)
    if parent != root and len(parent) > len(root):
        gained += _make_dirs(parent, root)
    # A folder another writer created just now is synced here too: its entry may not be
    # durable yet when this batch's references are stored.
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory)
    gained.append(parent)
    return gained


def _fsync_path(path: str) -> None:
    """fsync a file or a folder by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _VerifyingReader(io.RawIOBase):
    """Reads a decoded stream, hashing as it goes; raises CorruptObjectError at a bad end."""

    def __init__(self, stream: BinaryIO, object_id: str, addr: str) -> None:
        self._stream = stream
        self._id = object_id
        self._addr = addr
        self._hash = layout.hasher()
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # Straight into the caller's buffer and hashed there: no intermediate bytes object,
        # which cost more than the hashing itself on large reads.
        view = memoryview(buffer).cast("B")
        readinto = getattr(self._stream, "readinto", None)
        try:
            if readinto is not None:
                n = readinto(view) or 0
            else:
                data = self._stream.read(len(view))
                n = len(data)
                view[:n] = data
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(f"object {self._addr} does not decode: {exc}") from None
        if not n:
            if not self._verified:
                if self._hash.hexdigest() != self._id:
                    raise CorruptObjectError(f"object {self._addr} does not match its hash")
                self._verified = True
            return 0
        self._hash.update(view[:n])
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()
