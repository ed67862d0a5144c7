"""Committed trees: sorted entries chunked into content-addressed ranges, listed by a metarange.

A tree maps object paths to :class:`Entry`. Its entries, sorted by path, are cut into *ranges*
at content-defined boundaries (a path whose hash hits a target ends a range), each range stored
as one content-addressed object. The *metarange* lists the ranges with their first and last
path and is itself an object; its id is the tree's id. Because ranges are content-addressed and
boundaries depend only on paths:

* a new branch shares its source's metarange (O(1));
* a commit rewrites only the ranges its changes fall into;
* two trees that share a range id agree on every path in it, so a diff loads only the ranges
  that are not shared: its cost grows with the change, not the tree.
"""

from __future__ import annotations

import bisect
import functools
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store.backends.embedded import layout, rangecodec
from store.backends.embedded.objects import ObjectStore
from store.backends.embedded.rangecodec import POOL

#: A path ends a range when crc32(path) % TARGET == 0: about TARGET entries a range.
TARGET_ENTRIES = 512
MAX_ENTRIES = 4096
MAX_RANGE_BYTES = 1 << 20
#: A range also ends once its entries' inline contents reach this many bytes. Small files are
#: kept inline, and a range of a few hundred of them (a project's source files) would
#: otherwise be hundreds of kB that every commit touching a path near them rewrites.
MAX_RANGE_INLINE_BYTES = 64 << 10
EMPTY_TREE = layout.content_id(b"[]")
#: Ranges written by parallel threads once a tree change makes at least this many.
PARALLEL_WRITES_FROM = 4
WRITE_THREADS = 8
#: A change written as at most this many ranges keeps their tables in the range cache (they
#: are small; a large commit's pieces are slices of one large table, not worth pinning).
KEEP_WRITTEN_UP_TO = 4


@dataclass(frozen=True)
class Entry:
    """One object in a tree.

    Attributes:
        path: the object's path.
        checksum: BLAKE3 hex of its content.
        size: content size in bytes.
        mtime_ns: when it was written (epoch nanoseconds).
        address: where its blob is stored, or None when the content is inline.
        inline: the content itself for small objects (kept in the range, no blob of its own).
    """

    path: str
    checksum: str
    size: int
    mtime_ns: int
    address: str | None = None
    inline: bytes | None = None

    def row(self) -> rangecodec.Row:
        """The entry as a row of :data:`rangecodec.ENTRY_SCHEMA`."""
        return (self.path, self.checksum, self.size, self.mtime_ns, self.address, self.inline)


@dataclass(frozen=True)
class RangeRef:
    """A range as the metarange lists it."""

    id: str
    first: str
    last: str
    count: int


@dataclass(frozen=True)
class Comparison:
    """How a tree differs from another (see :meth:`TreeStore.compare`).

    Attributes:
        changed: some path was added or removed, or holds another content (checksum): what
            :meth:`TreeStore.diff` reports.
        only_content: every entry that differs in any way differs in its content; False when
            some path holds the same content with another size, time or storage (a file
            rewritten with the same bytes).
    """

    changed: bool
    only_content: bool


#: An entry's columns besides its path and content checksum.
_OUTSIDE_CONTENT = ("size", "mtime_ns", "address", "inline")


def _distinct(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Elementwise "a is distinct from b", treating two nulls as equal (never null)."""
    return pc.if_else(
        pc.is_null(a), pc.is_valid(b), pc.fill_null(pc.not_equal(a, b), True), memory_pool=POOL
    )


#: A change to apply: path -> new entry, or None to remove the path.
Changes = Mapping[str, Entry | None]


class TreeStore:
    """Reads and writes trees in an object store, caching decoded ranges (bounded LRU)."""

    def __init__(self, objects: ObjectStore, cache_ranges: int = 256) -> None:
        self.objects = objects
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_ranges
        self._lock = threading.Lock()

    # -- objects ---------------------------------------------------------------------------------

    def _load(self, object_id: str, decode: Callable[[bytes], Any], kind: str = "rows") -> Any:
        key = (object_id, kind)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        value = decode(self.objects.get_bytes(layout.address(object_id, layout.ZSTD)))
        self._keep(key, value)
        return value

    def _keep(self, key: tuple[str, str], value: Any) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _store(self, rows: list[rangecodec.Row], schema: pa.Schema) -> str:
        stored = self.objects.put_bytes(rangecodec.encode(rows, schema), codec=layout.ZSTD)
        return stored.id

    def ranges(self, tree_id: str) -> list[RangeRef]:
        """The ranges of a tree, in path order."""
        if tree_id == EMPTY_TREE:
            return []
        ranges: list[RangeRef] = self._load(tree_id, _decode_metarange)
        return ranges

    def range_entries(self, range_id: str) -> list[Entry]:
        entries: list[Entry] = self._load(range_id, _decode_range)
        return entries

    def range_table(self, range_id: str) -> pa.Table:
        """A range's entries as a table of :data:`rangecodec.ENTRY_SCHEMA`, in path order."""
        table: pa.Table = self._load(range_id, _decode_range_table, kind="table")
        return table

    def entry_table(self, object_id: str, codec: str = layout.ZSTD) -> pa.Table:
        """Any stored entry table (a range or a staged batch), uncached.

        Raises:
            ObjectNotFoundError, CorruptObjectError: the object is missing or damaged.
        """
        return _decode_range_table(self.objects.get_bytes(layout.address(object_id, codec)))

    def store_table(self, table: pa.Table, codec: str = layout.ZSTD) -> str:
        """Store a table of :data:`rangecodec.ENTRY_SCHEMA` as an object; its id.

        Ranges (zstd) are stored canonically, so equal rows give equal ids; staged batches
        (raw) are written as they are.
        """
        data = rangecodec.encode_table(table, canonical=codec == layout.ZSTD)
        return self.objects.put_bytes(data, codec=codec).id

    def write_ranges(self, ranges: list[RangeRef]) -> str:
        """Store a metarange; return the tree id."""
        if not ranges:
            self.objects.put_bytes(b"[]", codec=layout.ZSTD)
            return EMPTY_TREE
        rows = [(r.id, r.first, r.last, r.count) for r in ranges]
        tree_id = self._store(rows, rangecodec.METARANGE_SCHEMA)
        # The next commit or merge on the branch reads it back at once.
        self._keep((tree_id, "rows"), list(ranges))
        return tree_id

    def _write_range(self, entries: list[Entry]) -> RangeRef:
        range_id = self._store([e.row() for e in entries], rangecodec.ENTRY_SCHEMA)
        return RangeRef(range_id, entries[0].path, entries[-1].path, len(entries))

    # -- reading ---------------------------------------------------------------------------------

    def get(self, tree_id: str, path: str) -> Entry | None:
        ranges = self.ranges(tree_id)
        i = bisect.bisect_right(ranges, path, key=_first) - 1
        if i < 0 or path > ranges[i].last:
            return None
        entries = self.range_entries(ranges[i].id)
        j = bisect.bisect_left(entries, path, key=_path)
        return entries[j] if j < len(entries) and entries[j].path == path else None

    def get_many(self, tree_id: str, paths: Iterable[str]) -> dict[str, Entry]:
        """The entries of those ``paths`` that the tree holds (absent paths are left out).

        Each range is read at most once, whatever the number of paths: O(paths + ranges touched)
        where one :meth:`get` per path would cost O(paths x log ranges) and a range lookup each.
        """
        ranges = self.ranges(tree_id)
        firsts = [r.first for r in ranges]
        by_range: dict[int, list[str]] = {}
        for path in paths:
            i = bisect.bisect_right(firsts, path) - 1
            if i >= 0 and path <= ranges[i].last:
                by_range.setdefault(i, []).append(path)
        found: dict[str, Entry] = {}
        for i, wanted in by_range.items():
            entries = {e.path: e for e in self.range_entries(ranges[i].id)}
            found.update((p, entries[p]) for p in wanted if p in entries)
        return found

    def iter_entries(self, tree_id: str, prefix: str = "") -> Iterator[Entry]:
        """Entries whose path starts with ``prefix``, in path order."""
        for r in self.ranges(tree_id):
            if r.last < prefix:
                continue
            if not r.first.startswith(prefix) and r.first > prefix:
                break
            for entry in self.range_entries(r.id):
                if entry.path.startswith(prefix):
                    yield entry
                elif entry.path > prefix:
                    return

    # -- writing ---------------------------------------------------------------------------------

    def build(self, entries: Iterable[Entry]) -> str:
        """Write a tree from entries sorted by path; return its id."""
        return self.write_ranges(self._write_pieces(list(_cut(entries))))

    def apply(self, tree_id: str, changes: Changes) -> str:
        """A new tree: ``tree_id`` with ``changes`` applied. Untouched ranges are reused."""
        if not changes:
            return tree_id
        ranges = self.ranges(tree_id)
        firsts = [r.first for r in ranges]
        touched: dict[int, dict[str, Entry | None]] = {}
        for path in sorted(changes):
            i = max(bisect.bisect_right(firsts, path) - 1, 0)
            touched.setdefault(i, {})[path] = changes[path]
        # Each slot keeps its range, or becomes the pieces its merged entries are cut into.
        slots: list[RangeRef | list[list[Entry]]] = []
        for i, r in enumerate(list(ranges) or [None]):
            if i not in touched:
                assert r is not None
                slots.append(r)
                continue
            old = self.range_entries(r.id) if r is not None else []
            slots.append(list(_cut(_merge_sorted(old, touched[i]))))
        written = iter(self._write_pieces([p for s in slots if isinstance(s, list) for p in s]))
        result: list[RangeRef] = []
        for slot in slots:
            if isinstance(slot, RangeRef):
                result.append(slot)
            else:
                result.extend(next(written) for _ in slot)
        return self.write_ranges(result)

    def _write_pieces(self, pieces: list[list[Entry]]) -> list[RangeRef]:
        return self._write_pieces_with(self._write_range, pieces)

    def _write_pieces_with(
        self, write: Callable[[Any], RangeRef], pieces: list[Any]
    ) -> list[RangeRef]:
        """Store each piece as a range; the refs in the same order.

        Outside an object-store batch, ranges are encoded and written by a few threads at once:
        hashing, zstd and the fsync of each file release the GIL, so many ranges wait on the
        disk together rather than one after another. Inside a batch (commits, merges) they are
        written in this thread and the batch publishes them in parallel fsync waves.
        """
        if len(pieces) < PARALLEL_WRITES_FROM or self.objects.in_batch():
            # Inside a batch the object store fsyncs everything together at its end.
            return [write(piece) for piece in pieces]
        try:
            with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
                return list(pool.map(write, pieces))
        except RuntimeError as exc:
            # While the interpreter exits (writes from an atexit hook) pools refuse new work.
            if "shutdown" not in str(exc):
                raise
            return [write(piece) for piece in pieces]

    # -- column by column ------------------------------------------------------------------------

    def entries_at(self, tree_id: str, paths: pa.Array) -> pa.Table:
        """The tree's entries at those of ``paths`` (sorted, unique) that it holds, in path order.

        Only the ranges the paths fall into are read.
        """
        ranges = self.ranges(tree_id)
        bounds = _slot_bounds(ranges, paths)
        found = []
        for i, r in enumerate(ranges):
            if bounds[i] < bounds[i + 1]:
                old = self.range_table(r.id)
                wanted = paths.slice(bounds[i], bounds[i + 1] - bounds[i])
                mask = pc.is_in(old.column("path"), value_set=wanted, memory_pool=POOL)
                found.append(pc.filter(old, mask, memory_pool=POOL))
        return pa.concat_tables(found) if found else rangecodec.ENTRY_SCHEMA.empty_table()

    def apply_table(self, tree_id: str, changes: pa.Table) -> str:
        """A new tree: ``tree_id`` with ``changes`` applied, column by column; the same tree
        :meth:`apply` builds from the same changes, without a Python object per entry.

        Args:
            changes: rows with the columns of :data:`rangecodec.ENTRY_SCHEMA` (others are
                ignored), sorted by unique path; a null checksum removes the path.
        """
        if changes.num_rows == 0:
            return tree_id
        changes = changes.select(rangecodec.ENTRY_SCHEMA.names).combine_chunks(memory_pool=POOL)
        ranges = self.ranges(tree_id)
        bounds = _slot_bounds(ranges, changes.column("path").chunk(0))
        slots: list[RangeRef | list[pa.Table]] = []
        for i, r in enumerate(list(ranges) or [None]):
            start, stop = bounds[i], bounds[i + 1]
            if start == stop:
                assert r is not None
                slots.append(r)
                continue
            part = changes.slice(start, stop - start)
            merged = part
            if part.column("checksum").null_count:
                merged = pc.filter(part, pc.is_valid(part.column("checksum")), memory_pool=POOL)
            if r is not None:
                old = self.range_table(r.id)
                gone = pc.is_in(old.column("path"), value_set=part["path"], memory_pool=POOL)
                kept = pc.filter(old, pc.invert(gone), memory_pool=POOL)
                if kept.num_rows:
                    merged = sort_by_path(pa.concat_tables([kept, merged]))
            slots.append([merged.slice(a, b - a) for a, b in _cut_bounds(merged)])
        pieces = [p for s in slots if isinstance(s, list) for p in s]
        write = self._write_table if len(pieces) > KEEP_WRITTEN_UP_TO else self._write_kept
        written = iter(self._write_pieces_with(write, pieces))
        result: list[RangeRef] = []
        for slot in slots:
            if isinstance(slot, RangeRef):
                result.append(slot)
            else:
                result.extend(next(written) for _ in slot)
        return self.write_ranges(result)

    def _write_table(self, piece: pa.Table) -> RangeRef:
        paths = piece.column("path")
        return RangeRef(
            self.store_table(piece), paths[0].as_py(), paths[-1].as_py(), piece.num_rows
        )

    def _write_kept(self, piece: pa.Table) -> RangeRef:
        """:meth:`_write_table`, keeping the piece as the range's decoded table: the next
        commit or merge of the branch reads it back at once."""
        ref = self._write_table(piece)
        self._keep((ref.id, "table"), piece)
        return ref

    # -- comparing -------------------------------------------------------------------------------

    def diff(self, left: str, right: str) -> dict[str, tuple[Entry | None, Entry | None]]:
        """Paths whose entries differ: path -> (left entry, right entry); None where absent.

        Only ranges not shared by both trees are read.
        """
        if left == right:
            return {}
        left_ranges, right_ranges = self.ranges(left), self.ranges(right)
        shared = {r.id for r in left_ranges} & {r.id for r in right_ranges}
        old = self._entries_of(r for r in left_ranges if r.id not in shared)
        new = self._entries_of(r for r in right_ranges if r.id not in shared)
        out: dict[str, tuple[Entry | None, Entry | None]] = {}
        for path in old.keys() | new.keys():
            a, b = old.get(path), new.get(path)
            if a is None or b is None or a.checksum != b.checksum:
                out[path] = (a, b)
        return out

    def compare(self, left: str, right: str) -> Comparison:
        """How two trees differ, column by column (no Python object per entry).

        Only ranges not shared by both trees are read: the cost grows with the change.
        """
        if left == right:
            return Comparison(changed=False, only_content=True)
        left_ranges, right_ranges = self.ranges(left), self.ranges(right)
        shared = {r.id for r in left_ranges} & {r.id for r in right_ranges}
        old = self._table_of([r for r in left_ranges if r.id not in shared])
        new = self._table_of([r for r in right_ranges if r.id not in shared])
        # For each old entry, the new entry at its path (null where the path is gone).
        where = pc.index_in(old.column("path"), value_set=new.column("path"), memory_pool=POOL)
        matched = pc.take(new, where, memory_pool=POOL)
        same_content = pc.fill_null(
            pc.equal(old.column("checksum"), matched.column("checksum")), False
        )
        elsewhere = functools.reduce(
            pc.or_,
            (_distinct(old.column(c), matched.column(c)) for c in _OUTSIDE_CONTENT),
        )
        only_content = not pc.any(pc.and_(same_content, elsewhere), min_count=0).as_py()
        # Unique paths on both sides: equal counts and every old path holding its content
        # means the same paths with the same contents.
        unchanged = old.num_rows == new.num_rows and pc.all(same_content, min_count=0).as_py()
        return Comparison(changed=not unchanged, only_content=only_content)

    def differs_only_in_content(self, left: str, right: str) -> bool:
        """Whether every entry that differs between two trees differs in its content.

        Then ``left`` with :meth:`diff` ``(left, right)`` applied holds exactly ``right``'s
        entries; an entry whose content is the same but whose size, time or storage is not
        (a file rewritten with the same bytes) makes this False. Only ranges not shared by both
        trees are read.
        """
        return self.compare(left, right).only_content

    def _table_of(self, ranges: list[RangeRef]) -> pa.Table:
        if not ranges:
            return rangecodec.ENTRY_SCHEMA.empty_table()
        return pa.concat_tables([self.range_table(r.id) for r in ranges])

    def _entries_of(self, ranges: Iterable[RangeRef]) -> dict[str, Entry]:
        return {e.path: e for r in ranges for e in self.range_entries(r.id)}

    def referenced(self, tree_id: str) -> Iterator[str]:
        """Ids of the tree's metarange and ranges, and addresses of its blobs (for gc / fsck)."""
        yield layout.address(tree_id, layout.ZSTD)
        for r in self.ranges(tree_id):
            yield layout.address(r.id, layout.ZSTD)
            for entry in self.range_entries(r.id):
                if entry.address is not None:
                    yield entry.address


def _cut(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    """Sorted entries in range-sized pieces, ending at content-defined boundaries."""
    current: list[Entry] = []
    size = inline = 0
    for entry in entries:
        current.append(entry)
        inline += len(entry.inline) if entry.inline else 0
        size += len(entry.path) + 100 + (len(entry.inline) if entry.inline else 0)
        boundary = zlib.crc32(entry.path.encode()) % TARGET_ENTRIES == 0
        if (
            boundary
            or len(current) >= MAX_ENTRIES
            or size >= MAX_RANGE_BYTES
            or inline >= MAX_RANGE_INLINE_BYTES
        ):
            yield current
            current, size, inline = [], 0, 0
    if current:
        yield current


def sort_by_path(table: pa.Table, *more: tuple[str, str]) -> pa.Table:
    """The table's rows sorted by path (then by ``more`` (column, order) keys)."""
    keys = [("path", "ascending"), *more]
    return pc.take(table, pc.sort_indices(table, keys, memory_pool=POOL), memory_pool=POOL)


def _cut_bounds(table: pa.Table) -> list[tuple[int, int]]:
    """(start, stop) of the pieces :func:`_cut` cuts the same sorted entries into."""
    n = table.num_rows
    if n == 0:
        return []
    paths = table.column("path")
    # map() over C functions: no Python frame per path (the loop is most of cutting's time).
    hashes = np.fromiter(map(zlib.crc32, paths.cast(pa.binary()).to_pylist()), np.uint32, n)
    natural = np.flatnonzero(hashes % TARGET_ENTRIES == 0)
    inline = pc.fill_null(pc.binary_length(table.column("inline")), 0)
    sizes = pc.add(pc.add(pc.utf8_length(paths), 100), inline)
    total = np.cumsum(sizes.to_numpy(), dtype=np.int64)
    inline_total = np.cumsum(inline.to_numpy(), dtype=np.int64)
    bounds = []
    start = 0
    while start < n:
        stop = min(n, start + MAX_ENTRIES)
        k = int(np.searchsorted(natural, start))
        if k < len(natural):
            stop = min(stop, int(natural[k]) + 1)
        before = int(total[start - 1]) if start else 0
        stop = min(stop, int(np.searchsorted(total, before + MAX_RANGE_BYTES)) + 1)
        before = int(inline_total[start - 1]) if start else 0
        stop = min(stop, int(np.searchsorted(inline_total, before + MAX_RANGE_INLINE_BYTES)) + 1)
        bounds.append((start, stop))
        start = stop
    return bounds


class PathsView:
    """A string array seen as a sequence of str, for :mod:`bisect` (O(log n) conversions)."""

    def __init__(self, paths: pa.Array) -> None:
        self._paths = paths

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> str:
        value: str = self._paths[i].as_py()
        return value


def _slot_bounds(ranges: list[RangeRef], paths: pa.Array) -> list[int]:
    """Where sorted ``paths`` split among the slots :meth:`TreeStore.apply` uses: slot i (one
    per range, or a single one for an empty tree) gets paths[bounds[i]:bounds[i + 1]]."""
    view = PathsView(paths)
    inner = [bisect.bisect_left(view, r.first) for r in ranges[1:]]
    return [0, *inner, len(paths)]


def _decode_range_table(data: bytes) -> pa.Table:
    return rangecodec.decode_table(data, rangecodec.ENTRY_SCHEMA)


def _decode_metarange(data: bytes) -> list[RangeRef]:
    return [RangeRef(*row) for row in rangecodec.decode(data, rangecodec.METARANGE_SCHEMA)]


def _decode_range(data: bytes) -> list[Entry]:
    return [Entry(*row) for row in rangecodec.decode(data, rangecodec.ENTRY_SCHEMA)]


def _first(r: RangeRef) -> str:
    return r.first


def _path(e: Entry) -> str:
    return e.path


def _merge_sorted(old: list[Entry], changes: dict[str, Entry | None]) -> Iterator[Entry]:
    """Entries of ``old`` (sorted) with ``changes`` applied, in path order."""
    pending = sorted(changes.items())
    k = 0
    for entry in old:
        while k < len(pending) and pending[k][0] < entry.path:
            if pending[k][1] is not None:
                yield pending[k][1]  # type: ignore[misc]
            k += 1
        if k < len(pending) and pending[k][0] == entry.path:
            if pending[k][1] is not None:
                yield pending[k][1]  # type: ignore[misc]
            k += 1
        else:
            yield entry
    for _, new in pending[k:]:
        if new is not None:
            yield new
