"""The embedded backend: a lake in a folder, several processes at once, no server.

Data flow of a write: the content goes to the object store (atomically, deduplicated by hash)
or, when tiny, inline into SQLite; then one SQLite transaction stages the entry. A commit applies
the staged entries to the head's tree (rewriting only touched ranges), then in one transaction
moves the head by compare-and-swap, inserts the commit record into the refs database's
``commits`` table (its only home: the commit id is the BLAKE3 hash of the record bytes) and
clears exactly the staged rows it committed. A crash at any point leaves only unreferenced
objects, which gc removes.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import io
import itertools
import json
import operator
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

import blake3
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store.backend import CAP_FSCK, CAP_GC, CAP_LOCAL_PATHS, Backend
from store.backends.embedded import config, gclock, layout, rangecodec
from store.backends.embedded.objects import ObjectStore
from store.backends.embedded.rangecodec import POOL
from store.backends.embedded.refdb import CommitRow, RefDB, StagedBatch, StagedChange
from store.backends.embedded.tree import (
    EMPTY_TREE,
    Changes,
    Entry,
    PathsView,
    TreeStore,
    sort_by_path,
)
from store.errors import (
    AlreadyExistsError,
    AmbiguousRefError,
    BranchNotFoundError,
    ConcurrentUpdateError,
    ConflictError,
    CorruptObjectError,
    DirtyBranchError,
    InvalidArgumentError,
    LakeNotFoundError,
    NothingToCommitError,
    ObjectNotFoundError,
    ProtectedBranchError,
    RefNotFoundError,
    RefsDatabaseError,
)
from store.model import Change, ChangeKind, Commit, MergeStrategy, ObjectInfo

REFS_FILE = "refs.db"
#: Contents up to this size are kept inline (in the staging rows, then in the ranges), not as
#: objects: no file to create, fsync and rename for them.
INLINE_MAX = 8 << 10
#: flowlake's own records (runs, deployments, the policy ledger) live under this prefix and are
#: only ever read through ``open_read``/``read_many``, never opened in place, so they are kept
#: inline when small even when they are Parquet files (an empty tracking run's record then
#: creates no object file at its start).
RECORDS_PREFIX = "_flowlake/"
#: Up to this many rows, a table of writes is ordered by path in Python (see _last_write_wins).
SMALL_SORT_ROWS = 256
#: A ``put_many`` of at least this many objects is staged as one batch object (one row in the
#: refs database) instead of one row per object.
BATCH_FROM = 256
_ID_PATTERN = "^[0-9a-f]{64}$"
#: Staged batches are stored uncompressed: they live until the next commit, and their checksum
#: column does not compress, so zstd would cost more time than the disk it saves.
BATCH_CODEC = layout.RAW
#: Checked staged batches kept in memory, at most this many entries in all: reading or deleting
#: paths one by one after a large ``put_many`` must not read the whole batch for each path.
BATCH_CACHE_ENTRIES = 1 << 18
CAS_ATTEMPTS = 50
#: Commit rows are immutable: one read in the last COMMIT_CACHE_S seconds is reused (a run reads
#: its starting commit's row seven times). The bound in time keeps a commit that gc has since
#: dropped from another process visible here only briefly, as if read just before the drop.
COMMIT_CACHE_ENTRIES = 1024
COMMIT_CACHE_S = 60.0
P = ParamSpec("P")
R = TypeVar("R")
_HEX = re.compile(r"^[0-9a-f]{4,64}$")


def _writes(
    method: Callable[Concatenate[EmbeddedBackend, P], R],
) -> Callable[Concatenate[EmbeddedBackend, P], R]:
    """Run a method that stores objects and references them under the shared gc lock."""

    @functools.wraps(method)
    def locked(self: EmbeddedBackend, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock.writing():
            return method(self, *args, **kwargs)

    return locked


class EmbeddedBackend(Backend):
    """A lake in a local folder; objects in that folder or at any fsspec URL."""

    capabilities = frozenset({CAP_FSCK, CAP_GC, CAP_LOCAL_PATHS})

    def __init__(
        self, root: str, objects: ObjectStore, refs: RefDB, settings: config.LakeConfig
    ) -> None:
        self.root = root
        self.objects = objects
        self.trees = TreeStore(objects)
        self.refs = refs
        #: Where the objects live (absolute path or URL), and whether that is outside the lake
        #: folder, where other lakes may share it (then gc needs ``exclusive_objects``).
        self.objects_location = settings.objects
        self.objects_external = settings.external
        self.lock = gclock.GcLock(root)
        # Batch objects are immutable and content-addressed: a checked one stays valid.
        self._batch_cache: OrderedDict[str, pa.Table] = OrderedDict()
        self._batch_cache_lock = threading.Lock()
        # commit id -> (monotonic time read, row)
        self._commit_cache: OrderedDict[str, tuple[float, CommitRow]] = OrderedDict()
        self._commit_cache_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str,
        objects: str | None = None,
        storage_options: dict[str, Any] | None = None,
        create: bool = True,
    ) -> EmbeddedBackend:
        """Open the lake in folder ``path``, creating it when absent and ``create`` is true.

        Args:
            path: local folder holding the lake's refs database and configuration.
            objects: fsspec URL of the object location (default: ``<path>/objects``).
            storage_options: options for that filesystem (for example s3fs credentials).
            create: create a new lake when none is there.

        Raises:
            LakeNotFoundError: no lake there and ``create`` is false.
            InvalidArgumentError: the folder holds something that is not a lake, or ``objects``
                disagrees with the lake's recorded object location.
            RefsDatabaseError: the refs database is damaged, or gone while objects remain.
        """
        root = os.path.abspath(os.fspath(path))
        if not os.path.exists(os.path.join(root, config.CONFIG_FILE)):
            if not create:
                raise LakeNotFoundError(f"no lake at {root}")
            config.create(root, objects, reserved=(REFS_FILE, gclock.LOCK_FILE))
        settings = config.load(root)
        if objects is not None and not config.same_location(settings, objects):
            raise InvalidArgumentError(
                f"lake at {root} keeps its objects at {settings.objects}, not {objects}"
            )
        fs, obj_root = fsspec.core.url_to_fs(settings.objects, **(storage_options or {}))
        refs_path = os.path.join(root, REFS_FILE)
        if not os.path.exists(refs_path) and _holds_objects(settings):
            # A fresh refs.db would give the lake an empty main and hide all its history.
            raise RefsDatabaseError(
                f"lake at {root} has objects but its refs database {refs_path} is missing; "
                "restore it from a backup"
            )
        refs = RefDB(refs_path)
        try:
            backend = cls(root, ObjectStore(fs, obj_root), refs, settings)
            backend._ensure_initial_commit()
        except BaseException:
            refs.close()
            raise
        return backend

    def _ensure_initial_commit(self) -> None:
        """Give a new lake its first commit on a protected ``main``.

        A lake that has commits but no ``main`` row is damaged, not new: making a fresh ``main``
        would hide that, so it is left for fsck to report.
        """
        if self.refs.head(self.default_branch) is not None:
            return
        with self.lock.writing():
            with self.objects.batch():
                tree = self.trees.write_ranges([])
                row = self._write_commit(tree, (), "Repository created", {}, "flowlake")
            with self.refs.write() as conn:
                if conn.execute("SELECT 1 FROM commits LIMIT 1").fetchone() is not None:
                    return
                if self.refs.insert_branch(conn, self.default_branch, row.id):
                    self.refs.insert_commit(conn, row)
                    conn.execute(
                        "UPDATE branches SET protected = 1 WHERE name = ?", (self.default_branch,)
                    )

    def close(self) -> None:
        self.refs.close()
        self.objects.close()

    # -- refs -----------------------------------------------------------------------------------

    @_writes
    def create_branch(self, name: str, source_commit: str) -> None:
        if self.refs.commit(source_commit) is None:
            raise RefNotFoundError(f"commit {source_commit} does not exist")
        with self.refs.write() as conn:
            if not self.refs.insert_branch(conn, name, source_commit):
                raise AlreadyExistsError(f"branch {name!r} already exists")

    @_writes
    def create_branch_with(
        self, name: str, source_commit: str, items: Sequence[tuple[str, bytes]]
    ) -> None:
        """The branch and its staged items in one transaction, after the items' blobs are
        durable (one publish pass)."""
        if len(items) >= BATCH_FROM:
            super().create_branch_with(name, source_commit, items)
            return
        # Read from the database, not the in-memory rows: gc may have dropped the commit.
        if self.refs.commit(source_commit) is None:
            raise RefNotFoundError(f"commit {source_commit} does not exist")
        with self.objects.batch():
            changes = [StagedChange(path, self._store_content(path, data)) for path, data in items]
        with self.refs.write() as conn:
            if not self.refs.insert_branch(conn, name, source_commit):
                raise AlreadyExistsError(f"branch {name!r} already exists")
            self.refs.stage(conn, name, changes)

    def delete_branch(self, name: str) -> None:
        with self.refs.write() as conn:
            row = conn.execute("SELECT protected FROM branches WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise BranchNotFoundError(f"branch {name!r} does not exist")
            if row[0]:
                raise ProtectedBranchError(f"branch {name!r} is protected and cannot be deleted")
            conn.execute("DELETE FROM branches WHERE name = ?", (name,))
            self.refs.clear_staged(conn, name, None)

    def list_branches(self) -> dict[str, str]:
        return self.refs.branches()

    def branch_head(self, name: str) -> str:
        head = self.refs.head(name)
        if head is None:
            raise BranchNotFoundError(f"branch {name!r} does not exist")
        return head

    def protect_branch(self, name: str) -> None:
        with self.refs.write() as conn:
            cur = conn.execute("UPDATE branches SET protected = 1 WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise BranchNotFoundError(f"branch {name!r} does not exist")

    def protected_branches(self) -> set[str]:
        return self.refs.protected()

    @_writes
    def create_tag(self, name: str, commit_id: str) -> None:
        if self.refs.commit(commit_id) is None:
            raise RefNotFoundError(f"commit {commit_id} does not exist")
        with self.refs.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO tags (name, commit_id, created) VALUES (?, ?, ?)",
                (name, commit_id, time.time()),
            )
            if cur.rowcount == 0:
                raise AlreadyExistsError(f"tag {name!r} already exists")

    def delete_tag(self, name: str) -> None:
        with self.refs.write() as conn:
            if conn.execute("DELETE FROM tags WHERE name = ?", (name,)).rowcount == 0:
                raise RefNotFoundError(f"tag {name!r} does not exist")

    def list_tags(self) -> dict[str, str]:
        return self.refs.tags()

    def resolve(self, ref: str) -> str:
        head = self.refs.head(ref)
        if head is not None:
            return head
        tagged = self.refs.tag(ref)
        if tagged is not None:
            return tagged
        if _HEX.match(ref):
            matches = self.refs.commits_with_prefix(ref)
            if len(matches) > 1:
                raise AmbiguousRefError(f"commit id prefix {ref!r} matches several commits")
            if matches:
                return matches[0]
        raise RefNotFoundError(f"no branch, tag or commit named {ref!r}")

    def get_commit(self, commit_id: str) -> Commit:
        return _to_commit(self._commit_row(commit_id))

    def _commit_row(self, commit_id: str) -> CommitRow:
        now = time.monotonic()
        with self._commit_cache_lock:
            held = self._commit_cache.get(commit_id)
        if held is not None and now - held[0] < COMMIT_CACHE_S:
            return held[1]
        row = self.refs.commit(commit_id)
        if row is None:
            raise RefNotFoundError(f"commit {commit_id} does not exist")
        self._remember_commits(row)
        return row

    def _remember_commits(self, *rows: CommitRow) -> None:
        """Keep commit rows read, or just inserted by a committed transaction."""
        now = time.monotonic()
        with self._commit_cache_lock:
            for row in rows:
                self._commit_cache[row.id] = (now, row)
                self._commit_cache.move_to_end(row.id)
            while len(self._commit_cache) > COMMIT_CACHE_ENTRIES:
                self._commit_cache.popitem(last=False)

    def forget_commits(self) -> None:
        """Drop the commit rows kept in memory (gc calls this when it deletes commit rows)."""
        with self._commit_cache_lock:
            self._commit_cache.clear()

    def log(self, commit_id: str) -> Iterator[Commit]:
        first = self.get_commit(commit_id)
        heap = [(-first.timestamp.timestamp(), first.id, first)]
        seen = {first.id}
        while heap:
            _, _, commit = heapq.heappop(heap)
            yield commit
            for parent_id in commit.parents:
                if parent_id not in seen:
                    seen.add(parent_id)
                    parent = self.get_commit(parent_id)
                    heapq.heappush(heap, (-parent.timestamp.timestamp(), parent.id, parent))

    def merge_base(self, left: str, right: str) -> str | None:
        """Walks both histories by decreasing generation; the first commit reached from both
        sides is a common ancestor of maximal generation."""
        if left == right:
            return left
        flags = {left: 1, right: 2}
        rows = {c: self._commit_row(c) for c in (left, right)}
        heap = [(-rows[c].generation, c) for c in (left, right)]
        heapq.heapify(heap)
        while heap:
            _, commit_id = heapq.heappop(heap)
            flag = flags[commit_id]
            if flag == 3:
                return commit_id
            for parent in rows[commit_id].parents:
                if parent not in flags:
                    rows[parent] = self._commit_row(parent)
                    flags[parent] = flag
                    heapq.heappush(heap, (-rows[parent].generation, parent))
                elif flags[parent] | flag != flags[parent]:
                    flags[parent] |= flag
        return None

    # -- reading ---------------------------------------------------------------------------------

    def _tree_of(self, ref: str) -> tuple[str, str | None]:
        """(tree id, branch name or None) of a branch name or full commit id."""
        head = self.refs.head(ref)
        if head is not None:
            return self._commit_row(head).tree, ref
        row = self.refs.commit(ref)
        if row is None:
            raise RefNotFoundError(f"no branch or commit named {ref!r}")
        return row.tree, None

    def _entry(self, ref: str, path: str) -> Entry:
        tree, branch = self._tree_of(ref)
        if branch is not None:
            staged, entry = self._staged_one(branch, path)
            if staged:
                if entry is None:
                    raise ObjectNotFoundError(f"no object {path!r} in {ref!r}")
                return entry
        found = self.trees.get(tree, path)
        if found is None:
            raise ObjectNotFoundError(f"no object {path!r} in {ref!r}")
        return found

    def stat(self, ref: str, path: str) -> ObjectInfo:
        return _info(self._entry(ref, path))

    def open_read(self, ref: str, path: str) -> BinaryIO:
        entry = self._entry(ref, path)
        if entry.inline is not None:
            if layout.content_id(entry.inline) != entry.checksum:
                raise CorruptObjectError(f"inline object {path!r} does not match its hash")
            return io.BytesIO(entry.inline)
        assert entry.address is not None
        return self.objects.open(entry.address)

    def list_objects(self, ref: str, prefix: str = "") -> Iterator[ObjectInfo]:
        tree, branch = self._tree_of(ref)
        committed = self.trees.iter_entries(tree, prefix)
        if branch is None:
            yield from (_info(e) for e in committed)
            return
        table, _ = self._staged_table(branch, prefix)
        staged = [StagedChange(e.path, e if e.checksum else None) for e in _entries(table)]
        for _, entry in _overlay(committed, staged):
            if entry is not None:
                yield _info(entry)

    def local_path(self, ref: str, path: str) -> str | None:
        entry = self._entry(ref, path)
        if entry.address is None or entry.address.endswith(layout.ZSTD):
            return None
        return self.objects.url(entry.address)

    # -- writing ---------------------------------------------------------------------------------

    def _check_writable(self, branch: str) -> None:
        found = self.refs.head_protected(branch)
        if found is None:
            raise BranchNotFoundError(f"branch {branch!r} does not exist")
        if found[1]:
            raise ProtectedBranchError(
                f"branch {branch!r} is protected: change it by merging into it"
            )

    def _stage(self, branch: str, changes: list[StagedChange]) -> None:
        with self.refs.write() as conn:
            if conn.execute("SELECT 1 FROM branches WHERE name = ?", (branch,)).fetchone() is None:
                raise BranchNotFoundError(f"branch {branch!r} was deleted while writing")
            self.refs.stage(conn, branch, changes)

    def _store_content(self, path: str, data: bytes) -> Entry:
        mtime = time.time_ns()
        if _kept_inline(path, data):
            return Entry(path, layout.content_id(data), len(data), mtime, None, data)
        stored = self.objects.put_bytes(data)
        return Entry(path, stored.id, stored.size, mtime, stored.address)

    @_writes
    def put(self, branch: str, path: str, source: BinaryIO) -> ObjectInfo:
        self._check_writable(branch)
        head = source.read(INLINE_MAX + 1)
        if len(head) <= INLINE_MAX:
            entry = self._store_content(path, head)
        else:
            stored = self.objects.put_stream(source, first=head)
            entry = Entry(path, stored.id, stored.size, time.time_ns(), stored.address)
        self._stage(branch, [StagedChange(path, entry)])
        return _info(entry)

    @_writes
    def put_many(self, branch: str, items: Iterable[tuple[str, bytes]]) -> int:
        self._check_writable(branch)
        items = list(items)
        if len(items) >= BATCH_FROM:
            return self._put_batch(branch, items)
        # One batch: the blobs are durable (about two disk waits in all) before staged rows
        # reference them.
        with self.objects.batch():
            changes = [StagedChange(path, self._store_content(path, data)) for path, data in items]
        self._stage(branch, changes)
        return len(changes)

    def _put_batch(self, branch: str, items: list[tuple[str, bytes]]) -> int:
        """Stage many objects as one batch object and one refs row (see :class:`StagedBatch`).

        The batch object and the blobs it names are durable before the row references them,
        all in one publish pass, so a crash leaves either the whole batch staged or none of it.
        """
        mtime = time.time_ns()
        paths = pa.array([path for path, _ in items], pa.string(), memory_pool=POOL)
        contents = [data for _, data in items]
        data = pa.array(contents, pa.binary(), memory_pool=POOL)
        sizes = pc.binary_length(data, memory_pool=POOL).cast(pa.int64())
        small = pc.and_(
            pc.less_equal(sizes, INLINE_MAX),
            pc.or_(
                pc.starts_with(paths, RECORDS_PREFIX, memory_pool=POOL),
                pc.invert(pc.starts_with(data, layout.PARQUET_MAGIC.decode(), memory_pool=POOL)),
            ),
        )
        digest = blake3.blake3
        large = pc.indices_nonzero(pc.invert(small)).to_pylist()
        # Large contents are hashed by the object store as it stores them; map() over C
        # functions keeps a Python frame per object out of the loop.
        checksums = (
            [
                digest(content).hexdigest() if len(content) <= INLINE_MAX else ""
                for content in contents
            ]
            if large
            else list(map(_hexdigest, map(digest, contents)))
        )
        addresses: list[str | None] = [None] * len(contents)
        with self.objects.batch():
            for i in large:
                stored = self.objects.put_bytes(contents[i])
                checksums[i], addresses[i] = stored.id, stored.address
            inline = data if not large else pc.if_else(small, data, pa.scalar(None, pa.binary()))
            table = pa.table(
                [
                    paths,
                    pa.array(checksums, pa.string(), memory_pool=POOL),
                    sizes,
                    pa.array(np.full(len(items), mtime, dtype=np.int64)),
                    pa.array(addresses, pa.string(), memory_pool=POOL),
                    inline,
                ],
                schema=rangecodec.ENTRY_SCHEMA,
            )
            table = _last_write_wins(table)
            object_id = self.trees.store_table(table, BATCH_CODEC)
        path_column = table.column("path")
        with self.refs.write() as conn:
            if conn.execute("SELECT 1 FROM branches WHERE name = ?", (branch,)).fetchone() is None:
                raise BranchNotFoundError(f"branch {branch!r} was deleted while writing")
            self.refs.stage_batch(
                conn,
                branch,
                object_id,
                table.num_rows,
                path_column[0].as_py(),
                path_column[-1].as_py(),
            )
        return len(items)

    @_writes
    def delete(self, branch: str, paths: Iterable[str]) -> None:
        self._check_writable(branch)
        paths = list(paths)
        for path in paths:
            self._entry(branch, path)
        self._stage(branch, [StagedChange(p, None) for p in paths])

    # -- staged changes, rows and batches together -------------------------------------------

    def _batch_table(self, batch: StagedBatch) -> pa.Table:
        """A staged batch's entries, checked: the object is content-addressed (its hash is
        verified on read) and must hold exactly what its row says, in the form flowlake writes.

        Raises:
            ObjectNotFoundError: the batch object is missing.
            CorruptObjectError: it is damaged or disagrees with its row.
        """
        with self._batch_cache_lock:
            table = self._batch_cache.get(batch.object_id)
            if table is not None:
                self._batch_cache.move_to_end(batch.object_id)
        if table is None:
            table = self._checked_batch(batch.object_id)
            if table.num_rows <= BATCH_CACHE_ENTRIES:
                with self._batch_cache_lock:
                    self._batch_cache[batch.object_id] = table
                    while sum(t.num_rows for t in self._batch_cache.values()) > BATCH_CACHE_ENTRIES:
                        self._batch_cache.popitem(last=False)
        paths = table.column("path")
        if table.num_rows != batch.count:
            problem = f"{table.num_rows} entries where its row says {batch.count}"
        elif table.num_rows and (paths[0].as_py(), paths[-1].as_py()) != (batch.first, batch.last):
            problem = "its paths disagree with its row"
        else:
            return table
        raise CorruptObjectError(f"staged batch {batch.object_id}: {problem}")

    def _checked_batch(self, object_id: str) -> pa.Table:
        """A batch object's entries, read and checked (see :meth:`_batch_table`).

        Raises:
            ObjectNotFoundError, CorruptObjectError: as :meth:`_batch_table`.
        """
        table = self.trees.entry_table(object_id, BATCH_CODEC)
        paths = table.column("path")
        problem = ""
        if paths.null_count or table.column("checksum").null_count:
            problem = "an entry has no path or checksum"
        elif (
            table.num_rows > 1
            and not pc.all(pc.less(paths.slice(0, len(paths) - 1), paths.slice(1))).as_py()
        ):
            problem = "its paths are not sorted and unique"
        elif not pc.all(pc.match_substring_regex(table.column("checksum"), _ID_PATTERN)).as_py():
            problem = "a checksum is not a content id"
        elif pc.any(
            pc.and_(pc.is_null(table.column("address")), pc.is_null(table.column("inline")))
        ).as_py():
            problem = "an entry has neither an address nor inline content"
        else:
            try:
                for address in table.column("address").drop_null().to_pylist():
                    layout.parse_address(address)
            except ValueError:
                problem = "an entry's address is malformed"
        if problem:
            raise CorruptObjectError(f"staged batch {object_id}: {problem}")
        return table

    def _staged_one(self, branch: str, path: str) -> tuple[bool, Entry | None]:
        """(is staged, the staged entry or None for a staged deletion): the newest of its
        staged row and the staged batches holding it."""
        seq, entry, batches = self.refs.staged_one(branch, path)
        for batch in batches:  # newest first, all newer than the row
            table = self._batch_table(batch)
            paths = table.column("path")
            i = bisect.bisect_left(PathsView(paths), path)
            if i < len(paths) and paths[i].as_py() == path:
                return True, next(_entries(table.slice(i, 1)))
        return seq > 0, entry

    def _staged_table(self, branch: str, prefix: str = "") -> tuple[pa.Table, int]:
        """The branch's staged changes under ``prefix`` as one table of
        :data:`rangecodec.ENTRY_SCHEMA`, sorted by unique path, the newest staging of each path
        winning (a null checksum is a deletion); and the highest staged seq read."""
        rows, batches, top = self.refs.staged(branch, prefix)
        if rows and not batches:
            # Rows alone are unique per path (one per branch and path) and come sorted by it
            # (SQLite's binary order of UTF-8 is Arrow's order of strings): no sort to make.
            return _rows_table([change for _, change in rows]), top
        parts: list[tuple[int, pa.Table]] = []
        for batch in batches:
            table = self._batch_table(batch)
            if prefix:
                table = _under(table, prefix)
            parts.append((batch.seq, table))
        if rows:
            parts.append((-1, _rows_table([change for _, change in rows])))
        if not parts:
            return rangecodec.ENTRY_SCHEMA.empty_table(), top
        if not rows:
            # Batches of disjoint path spans (the common case: one large upload in parts)
            # concatenate in path order with no sort.
            parts.sort(
                key=lambda part: part[1].column("path")[0].as_py() if part[1].num_rows else ""
            )
            spans = [
                (t.column("path")[0].as_py(), t.column("path")[-1].as_py())
                for _, t in parts
                if t.num_rows
            ]
            if all(a[1] < b[0] for a, b in itertools.pairwise(spans)):
                return pa.concat_tables([t for _, t in parts]).combine_chunks(POOL), top
        seqs = [
            pa.array([seq for seq, _ in rows], pa.int64())
            if seq < 0
            else pa.array(np.full(table.num_rows, seq, dtype=np.int64), memory_pool=POOL)
            for seq, table in parts
        ]
        combined = sort_by_path(
            pa.concat_tables(
                [t.append_column("seq", s) for (_, t), s in zip(parts, seqs, strict=True)]
            ),
            ("seq", "descending"),
        )
        return _first_per_path(combined).drop_columns(["seq"]), top

    def _effective_staged(
        self, branch: str, written: Sequence[StagedChange] = ()
    ) -> tuple[str, pa.Table, int]:
        """(head commit, staged changes that really change the head tree, highest staged seq).

        The changes are a table of :data:`rangecodec.ENTRY_SCHEMA` sorted by unique path (a
        null checksum removes the path) with one more column, ``existed``: whether the head
        tree holds the path. ``written`` are laid over the staged changes, as if staged last.
        """
        head = self.branch_head(branch)
        staged, top = self._staged_table(branch)
        if not staged.num_rows and not written:
            return head, staged.append_column("existed", pa.array([], pa.bool_())), top
        tree = self._commit_row(head).tree
        if written:
            staged = _last_write_wins(
                pa.concat_tables(
                    [staged.select(rangecodec.ENTRY_SCHEMA.names), _rows_table(list(written))]
                )
            )
        old = self.trees.entries_at(tree, staged.column("path"))
        where = pc.index_in(staged.column("path"), value_set=old.column("path"), memory_pool=POOL)
        existed = pc.is_valid(where)
        changed = pc.fill_null(
            pc.not_equal(
                staged.column("checksum"), pc.take(old.column("checksum"), where, memory_pool=POOL)
            ),
            True,
        )
        keep = pc.if_else(pc.is_null(staged.column("checksum")), existed, changed)
        changes = staged.append_column("existed", existed)
        if not pc.all(keep).as_py():
            changes = pc.filter(changes, keep, memory_pool=POOL)
        return head, changes, top

    def uncommitted(self, branch: str) -> Iterator[Change]:
        _, changes, _ = self._effective_staged(branch)
        paths = changes.column("path").to_pylist()
        removed = pc.is_null(changes.column("checksum")).to_pylist()
        existed = changes.column("existed").to_pylist()
        for path, gone, was in zip(paths, removed, existed, strict=True):
            if gone:
                yield Change(path, ChangeKind.REMOVED)
            elif not was:
                yield Change(path, ChangeKind.ADDED)
            else:
                yield Change(path, ChangeKind.CHANGED)

    def staged_addresses(self, after_seq: int = 0) -> tuple[set[str], int]:
        """Addresses of the objects changes staged with a seq above ``after_seq`` reference
        (blobs, and staged batches with the blobs they name), and the highest seq seen.

        Raises:
            RefsDatabaseError: a staged row is damaged, or a staged batch cannot be read
                (what it references is unknown, so gc must stop).
        """
        addresses, batches, top = self.refs.staged_addresses(after_seq)
        for batch in batches:
            addresses.add(layout.address(batch.object_id, BATCH_CODEC))
            try:
                table = self._batch_table(batch)
            except (ObjectNotFoundError, CorruptObjectError) as exc:
                raise RefsDatabaseError(f"uncommitted change: {exc}") from exc
            addresses.update(table.column("address").drop_null().to_pylist())
        return addresses, top

    def reset(self, branch: str) -> None:
        self.branch_head(branch)
        with self.refs.write() as conn:
            self.refs.clear_staged(conn, branch, None)

    @_writes
    def commit(self, branch: str, message: str, metadata: dict[str, str], committer: str) -> Commit:
        return self._commit(branch, (), message, metadata, committer)

    @_writes
    def commit_writes(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
    ) -> Commit:
        if len(items) >= BATCH_FROM:
            self.put_many(branch, items)
            return self._commit(branch, (), message, metadata, committer)
        return self._commit(branch, items, message, metadata, committer)

    @_writes
    def commit_writes_merged(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
        dest_branch: str,
        merge_message: str,
        merge_metadata: dict[str, str],
    ) -> tuple[Commit, Commit | None]:
        """The commit and its merge as one publish pass and one transaction moving both heads.

        The merge commit is the one :meth:`merge` makes when ``dest_branch`` has not moved
        since the merge base: the new commit's tree with parents (destination head, new
        commit). When that does not apply, or the destination moves before the transaction,
        the commit is made alone (its merge record, never stored, is dropped).
        """
        if len(items) >= BATCH_FROM or dest_branch == branch:
            return self.commit_writes(branch, items, message, metadata, committer), None
        self._check_writable(branch)
        for _ in range(CAS_ATTEMPTS):
            merge_row: CommitRow | None = None
            with self.objects.batch():
                head, tree, row, top = self._write_staged_commit(
                    branch, items, message, metadata, committer
                )
                dest = self._fast_merge_head(head, dest_branch, tree)
                if dest is not None:
                    dest_head, dest_top = dest
                    merge_row = self._write_commit(
                        tree,
                        (dest_head, row.id),
                        merge_message,
                        merge_metadata,
                        committer,
                        generation=1 + max(self._commit_row(dest_head).generation, row.generation),
                    )
            with self.refs.write() as conn:
                if not self.refs.move_head(conn, branch, head, row.id):
                    if self.refs.head(branch) is None:
                        raise BranchNotFoundError(f"branch {branch!r} was deleted")
                    continue
                self.refs.insert_commit(conn, row)
                self.refs.clear_staged(conn, branch, top)
                merged = merge_row is not None and self.refs.move_head(
                    conn, dest_branch, dest_head, merge_row.id
                )
                if merged:
                    assert merge_row is not None
                    self.refs.insert_commit(conn, merge_row)
                    self.refs.clear_staged(conn, dest_branch, dest_top)
            if merged and merge_row is not None:
                self._remember_commits(row, merge_row)
                return _to_commit(row), _to_commit(merge_row)
            self._remember_commits(row)
            return _to_commit(row), None
        raise ConcurrentUpdateError(branch, head, self.refs.head(branch))

    def _fast_merge_head(self, head: str, dest_branch: str, tree: str) -> tuple[str, int] | None:
        """(destination head, its highest staged seq) when :meth:`merge` would merge a new
        commit on ``head`` with tree ``tree`` into ``dest_branch`` by taking ``tree``: the
        destination is clean, is the merge base, and only contents differ from it; else None.
        """
        try:
            dest_head, dest_top = self._clean_head(dest_branch)
        except (DirtyBranchError, BranchNotFoundError):
            return None
        # The new commit's merge base with the destination is its parent's (it is no
        # ancestor of the destination, being new).
        if self.merge_base(head, dest_head) != dest_head:
            return None
        # On the destination's head itself, the new tree differs by the staged changes only,
        # and those are changes of content (_effective_staged drops the others).
        if head != dest_head:
            compared = self.trees.compare(self._commit_row(dest_head).tree, tree)
            if not (compared.changed and compared.only_content):
                return None
        return dest_head, dest_top

    def _write_staged_commit(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
    ) -> tuple[str, str, CommitRow, int]:
        """Inside a publish batch: store ``items``, and write the commit of the branch's staged
        changes with them over its head. Returns (head, new tree, commit row, highest staged
        seq); nothing is moved.

        Raises:
            NothingToCommitError: nothing would change the head's tree.
        """
        written = [StagedChange(path, self._store_content(path, data)) for path, data in items]
        head, changes, top = self._effective_staged(branch, written)
        if not changes.num_rows:
            raise NothingToCommitError(f"branch {branch!r} has no uncommitted changes")
        tree = self.trees.apply_table(self._commit_row(head).tree, changes)
        return head, tree, self._write_commit(tree, (head,), message, metadata, committer), top

    def _commit(
        self,
        branch: str,
        items: Sequence[tuple[str, bytes]],
        message: str,
        metadata: dict[str, str],
        committer: str,
    ) -> Commit:
        """Commit the staged changes with ``items`` written over them, never staging the items:
        their blobs, the ranges and the metarange share one publish pass, which makes them all
        durable before the one transaction that moves the head and inserts the commit record."""
        self._check_writable(branch)
        for _ in range(CAS_ATTEMPTS):
            with self.objects.batch():
                head, tree, row, top = self._write_staged_commit(
                    branch, items, message, metadata, committer
                )
            if self._advance(branch, head, row, clear_up_to=top):
                return _to_commit(row)
        raise ConcurrentUpdateError(branch, head, self.refs.head(branch))

    def _write_commit(
        self,
        tree: str,
        parents: tuple[str, ...],
        message: str,
        metadata: dict[str, str],
        committer: str,
        generation: int | None = None,
    ) -> CommitRow:
        """A new commit's record and id, stored nowhere yet: the transaction that moves a head
        to it inserts it (``RefDB.insert_commit``), so the record and the head move are durable
        together or not at all. The refs database is the record's only home, as lakeFS keeps
        commits in its KV store; only ranges and metaranges are objects. The id is the BLAKE3
        hash of the record bytes (canonical JSON), as it was when records were also objects.

        Args:
            generation: given when a parent is not in the refs database yet.
        """
        if generation is None:
            generation = 1 + max((self._commit_row(p).generation for p in parents), default=0)
        record = {
            "tree": tree,
            "parents": list(parents),
            "message": message,
            "metadata": dict(metadata),
            "timestamp": datetime.now(UTC).isoformat(),
            "committer": committer,
            "generation": generation,
        }
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        return CommitRow(layout.content_id(data), tree, parents, generation, data)

    def _advance(
        self, branch: str, expected: str, row: CommitRow, clear_up_to: int | None = -1
    ) -> bool:
        """Move ``branch`` from ``expected`` to the new commit; False if the head moved."""
        with self.refs.write() as conn:
            if not self.refs.move_head(conn, branch, expected, row.id):
                if self.refs.head(branch) is None:
                    raise BranchNotFoundError(f"branch {branch!r} was deleted")
                return False
            self.refs.insert_commit(conn, row)
            if clear_up_to != -1:
                self.refs.clear_staged(conn, branch, clear_up_to)
        self._remember_commits(row)
        return True

    # -- comparing and merging ---------------------------------------------------------------

    def diff(self, left: str, right: str) -> Iterator[Change]:
        changes = self.trees.diff(self._commit_row(left).tree, self._commit_row(right).tree)
        for path in sorted(changes):
            old, new = changes[path]
            kind = (
                ChangeKind.ADDED
                if old is None
                else ChangeKind.REMOVED
                if new is None
                else ChangeKind.CHANGED
            )
            yield Change(path, kind)

    def _three_way(
        self, base: str, source: str, dest: str, strategy: MergeStrategy | None
    ) -> tuple[Changes, bool]:
        """Changes to apply to ``dest`` (tree ids throughout) and whether source changed anything.

        Raises:
            ConflictError: without a strategy, when both sides changed a path differently.
        """
        theirs = self.trees.diff(base, source)
        ours = self.trees.diff(base, dest)
        conflicts = [
            p
            for p in theirs.keys() & ours.keys()
            if _checksum(theirs[p][1]) != _checksum(ours[p][1])
        ]
        if conflicts and strategy is None:
            raise ConflictError("merge conflict", conflicts)
        apply: dict[str, Entry | None] = {}
        for path, (_, new) in theirs.items():
            if path in ours and (
                _checksum(ours[path][1]) == _checksum(new) or strategy != "source-wins"
            ):
                continue
            apply[path] = new
        return apply, bool(theirs)

    @_writes
    def merge(
        self,
        source: str,
        dest_branch: str,
        strategy: MergeStrategy | None,
        message: str,
        metadata: dict[str, str],
        committer: str,
        guard: Collection[str] = (),
    ) -> Commit:
        if strategy not in (None, "source-wins", "dest-wins"):
            raise InvalidArgumentError(f"unknown merge strategy {strategy!r}")
        source_commit = self.resolve(source)
        guarded = frozenset(guard)
        for _ in range(CAS_ATTEMPTS):
            dest_head, staged_up_to = self._clean_head(dest_branch)
            base = self.merge_base(source_commit, dest_head)
            if base == source_commit:
                raise NothingToCommitError(f"{source!r} has nothing to merge into {dest_branch!r}")
            base_tree = self._commit_row(base).tree if base else EMPTY_TREE
            dest_tree = self._commit_row(dest_head).tree
            source_tree = self._commit_row(source_commit).tree
            # The destination has not moved since the base: nothing conflicts, no strategy or
            # guard applies, and the three-way result holds the source's entries, so the merge
            # commit (still with both parents) takes the source's tree instead of rewriting
            # ranges. Not when an entry differs from the base only outside its content (a file
            # rewritten with the same bytes): the three-way merge keeps the destination's there.
            compared = self.trees.compare(base_tree, source_tree) if base == dest_head else None
            if compared is not None and compared.only_content:
                if not compared.changed:
                    raise NothingToCommitError(
                        f"{source!r} has nothing to merge into {dest_branch!r}"
                    )
                row = self._write_commit(
                    source_tree, (dest_head, source_commit), message, metadata, committer
                )
                if self._advance(dest_branch, dest_head, row, clear_up_to=staged_up_to):
                    return _to_commit(row)
                continue
            if guarded:  # checked against the head the compare-and-swap below expects
                moved = guarded & self.trees.diff(base_tree, dest_tree).keys()
                if moved:
                    raise ConflictError("guarded paths changed on the destination", sorted(moved))
            changes, changed = self._three_way(base_tree, source_tree, dest_tree, strategy)
            if not changed:
                raise NothingToCommitError(f"{source!r} has nothing to merge into {dest_branch!r}")
            with self.objects.batch():
                tree = self.trees.apply(dest_tree, changes)
                row = self._write_commit(
                    tree, (dest_head, source_commit), message, metadata, committer
                )
            if self._advance(dest_branch, dest_head, row, clear_up_to=staged_up_to):
                return _to_commit(row)
        raise ConcurrentUpdateError(dest_branch, dest_head, self.refs.head(dest_branch))

    @_writes
    def revert(self, branch: str, commit_id: str, committer: str) -> Commit:
        target = self._commit_row(commit_id)
        parent_tree = self._commit_row(target.parents[0]).tree if target.parents else EMPTY_TREE
        for _ in range(CAS_ATTEMPTS):
            head, staged_up_to = self._clean_head(branch)
            head_tree = self._commit_row(head).tree
            changes, changed = self._three_way(target.tree, parent_tree, head_tree, None)
            if not changed:
                raise NothingToCommitError(f"commit {commit_id} changed nothing to revert")
            with self.objects.batch():
                tree = self.trees.apply(head_tree, changes)
                row = self._write_commit(
                    tree, (head,), f"Revert {commit_id[:12]}", {"reverted": commit_id}, committer
                )
            if self._advance(branch, head, row, clear_up_to=staged_up_to):
                return _to_commit(row)
        raise ConcurrentUpdateError(branch, head, self.refs.head(branch))

    def _clean_head(self, branch: str) -> tuple[str, int]:
        """The head of a branch without uncommitted changes, and the highest staged seq read.

        Staged rows that change nothing (a new file written, then deleted) do not make a branch
        dirty; the caller clears them with its head move so they cannot come alive later.

        Raises:
            DirtyBranchError: the branch has uncommitted changes.
        """
        head, changes, top = self._effective_staged(branch)
        if changes.num_rows:
            raise DirtyBranchError(f"branch {branch!r} has uncommitted changes")
        return head, top

    # -- maintenance -----------------------------------------------------------------------------

    def fsck(self) -> list[str]:
        from store.backends.embedded.maintenance import check

        return check(self)

    def gc(self, retention: timedelta, *, exclusive_objects: bool = False) -> int:
        from store.backends.embedded.maintenance import collect

        return collect(self, retention, exclusive_objects)


def _holds_objects(settings: config.LakeConfig) -> bool:
    """Whether a local object folder holds any object (fan-out folders), cheaply."""
    if "://" in settings.objects:
        return False  # not worth a remote listing on every open of a new lake
    try:
        with os.scandir(settings.objects) as entries:
            return any(e.name != "tmp" and e.is_dir() for e in entries)
    except FileNotFoundError:
        return False


def _kept_inline(path: str, data: bytes) -> bool:
    """Whether a content is kept inline rather than as an object: it is small, and it is not a
    Parquet file that a reader may open in place (:meth:`EmbeddedBackend.local_path`, which
    DuckDB and pyarrow use) unless it is one of flowlake's own records (:data:`RECORDS_PREFIX`).
    """
    return len(data) <= INLINE_MAX and (
        path.startswith(RECORDS_PREFIX) or not data.startswith(layout.PARQUET_MAGIC)
    )


def _checksum(entry: Entry | None) -> str | None:
    return None if entry is None else entry.checksum


def _info(entry: Entry) -> ObjectInfo:
    mtime = datetime.fromtimestamp(entry.mtime_ns / 1e9, tz=UTC)
    return ObjectInfo(entry.path, entry.size, entry.checksum, mtime)


def _to_commit(row: CommitRow) -> Commit:
    """The commit a row holds.

    Raises:
        RefsDatabaseError: the row's record is not the one its id was made from (its only
            copy: there is no commit object to fall back on), or is not a commit record.
    """
    damaged = RefsDatabaseError(
        f"commit {row.id}: the record in its index row is damaged; run `flowlake fsck`"
    )
    if layout.content_id(row.record) != row.id:
        raise damaged
    try:
        record = json.loads(row.record)
        return Commit(
            id=row.id,
            message=record["message"],
            metadata=record["metadata"],
            parents=tuple(record["parents"]),
            timestamp=datetime.fromisoformat(record["timestamp"]),
            committer=record["committer"],
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise damaged from exc


def _overlay(
    committed: Iterator[Entry], staged: list[StagedChange]
) -> Iterator[tuple[str, Entry | None]]:
    """Committed entries with staged changes laid over them, in path order."""
    pending = iter(staged)
    nxt = next(pending, None)
    for entry in committed:
        while nxt is not None and nxt.path < entry.path:
            yield nxt.path, nxt.entry
            nxt = next(pending, None)
        if nxt is not None and nxt.path == entry.path:
            yield nxt.path, nxt.entry
            nxt = next(pending, None)
        else:
            yield entry.path, entry
    while nxt is not None:
        yield nxt.path, nxt.entry
        nxt = next(pending, None)


_hexdigest = operator.methodcaller("hexdigest")


def _entries(table: pa.Table) -> Iterator[Entry]:
    """A table of :data:`rangecodec.ENTRY_SCHEMA`'s rows as entries (checksum None for a
    staged deletion's row)."""
    columns = [table.column(name).to_pylist() for name in rangecodec.ENTRY_SCHEMA.names]
    for row in zip(*columns, strict=True):
        yield Entry(*row)


def _rows_table(changes: list[StagedChange]) -> pa.Table:
    """Staged rows as a table of :data:`rangecodec.ENTRY_SCHEMA` (deletions: nulls)."""
    rows = [
        (c.path, None, None, None, None, None) if c.entry is None else c.entry.row()
        for c in changes
    ]
    return pa.table(
        [
            pa.array(column, type=field.type)
            for column, field in zip(zip(*rows, strict=True), rangecodec.ENTRY_SCHEMA, strict=True)
        ],
        schema=rangecodec.ENTRY_SCHEMA,
    )


def _under(table: pa.Table, prefix: str) -> pa.Table:
    """The rows of a path-sorted table whose path starts with ``prefix``."""
    view = PathsView(table.column("path"))
    start = bisect.bisect_left(view, prefix)
    stop = bisect.bisect_left(view, prefix + "\U0010ffff")
    return table.slice(start, stop - start)


def _first_per_path(table: pa.Table) -> pa.Table:
    """The first row of each run of equal paths in a path-sorted table."""
    if table.num_rows < 2:
        return table
    paths = table.column("path")
    n = len(paths)
    new = pc.not_equal(paths.slice(1), paths.slice(0, n - 1))
    return pc.filter(table, pa.concat_arrays([pa.array([True]), *new.chunks]), memory_pool=POOL)


def _last_write_wins(table: pa.Table) -> pa.Table:
    """A ``put_many``'s entries sorted by path, keeping the last write of a path repeated."""
    paths = table.column("path")
    n = len(paths)
    if n < 2 or pc.all(pc.less(paths.slice(0, n - 1), paths.slice(1))).as_py():
        return table
    if n <= SMALL_SORT_ROWS:
        # A few rows (a run's records over its staged start records): ordering them in
        # Python costs a fraction of an Arrow sort on two keys.
        last = {path: i for i, path in enumerate(paths.to_pylist())}
        return table.take(pa.array([last[path] for path in sorted(last)], pa.int64()))
    order = pa.array(np.arange(n, dtype=np.int64))
    ranked = sort_by_path(table.append_column("order", order), ("order", "descending"))
    return _first_per_path(ranked).drop_columns(["order"])
