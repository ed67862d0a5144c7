"""The local run history index: a derived cache that makes SQL over many runs cheap.

Never the source of truth: everything in it is rebuilt from the lake when missing, and deleting
its folder at any moment (even while a query runs elsewhere) only costs time. It holds two
things, both immutable once written:

* **listings**: the files under a prefix of ``_flowlake/runs/`` at a *commit* (commits never
  change), with each file's checksum and size. A commit's listing is derived from a cached
  parent's listing plus ``diff(parent, commit)`` when one is cached, else listed in full.
* **objects**: the decoded rows of each run file, keyed by the object's checksum (objects are
  content-addressed, so the rows of a checksum never change). Every object enters the index
  through ``lake.read_many``, which verifies its hash, so a query never reads an unverified
  byte; rows are appended to a few large local Parquet *segments* (the small metric parts of
  thousands of runs become one file DuckDB scans at full speed) and each object's rows carry an
  integer ``_oid`` (dense over the index) the views join on. Objects that do not decode against
  their view's schema are remembered as problems (skipped and reported, never read again).

Layout under the cache folder (``$FLOWLAKE_CACHE_DIR``, else ``~/.cache/flowlake``)::

    tracking/<lake key>/index.db                       SQLite: listings, objects, segments, runs
    tracking/<lake key>/segments/<view>/<n>.parquet    decoded rows + _oid

Several processes may share it: SQLite arbitrates the tables, and segment files are written
under a temporary name and renamed, so a reader sees a whole segment or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from store import tables
from store.errors import ObjectNotFoundError

if TYPE_CHECKING:
    from store import Lake

#: Bumped when the index's tables or segment contents change meaning; a new version starts empty.
#: 6: the ``code`` and ``environment`` segments hold no ``run_id`` (the views take it from the
#: run folder, see ``views.FOLDER_RUN_ID_VIEWS``).
INDEX_VERSION = 6
#: Compact a view's segments into one when it has more than this many.
MAX_SEGMENTS = 8
#: Rows per row group of a segment; a lookup of one object reads only the groups that hold it.
SEGMENT_ROW_GROUP_ROWS = 256 * 1024
#: Seconds a compacted segment is kept for queries that were already reading it.
RETIRED_KEPT_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS listings (
    commit_id TEXT NOT NULL, prefix TEXT NOT NULL, files TEXT NOT NULL,
    PRIMARY KEY (commit_id, prefix));
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, view TEXT NOT NULL, path TEXT NOT NULL,
    retired REAL);
CREATE TABLE IF NOT EXISTS objects (
    checksum TEXT NOT NULL, view TEXT NOT NULL, oid INTEGER, segment INTEGER, status TEXT,
    problem TEXT, PRIMARY KEY (checksum, view));
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, branch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('oid', 0);
"""


_SOURCE_FIELDS = [
    ("ref", pa.string()),
    ("namespace", pa.string()),
    ("branch", pa.string()),
    ("commit", pa.string()),
]

#: One row per object occurrence a view reads: the object's rows (``_oid``) and where it was
#: found; ``status`` is a run record's recorded status, ``volatile`` marks a source whose run
#: may still write uncommitted files (it is resolved afresh on every query).
RESOLVED_SCHEMA = pa.schema(
    [
        ("_oid", pa.int64()),
        *_SOURCE_FIELDS,
        ("run_id", pa.string()),
        ("read_ref", pa.string()),
        ("status", pa.string()),
        ("volatile", pa.bool_()),
    ]
)

#: The ``problems`` view: run files skipped because they do not decode.
PROBLEMS_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("path", pa.string()), ("problem", pa.string()), *_SOURCE_FIELDS]
)

#: Objects read per ``lake.read_many`` call when loading (bounds the raw bytes held at once).
READ_BATCH = 256

#: Resolved views kept per lake (the newest by use); older ones are deleted.
MAX_RESOLVED = 64


#: Per index folder, in this process: run id -> the branch it was last seen on (the index's
#: ``runs`` table as read or written here; hints only, so never stale in a harmful way).
_run_branch_hints: dict[str, dict[str, str]] = {}
#: Hints kept per index folder (all are dropped past this; they are read again when needed).
MAX_RUN_HINTS = 1 << 17


def _hint(hints: dict[str, str], pairs: dict[str, str]) -> None:
    if len(hints) + len(pairs) > MAX_RUN_HINTS:
        hints.clear()
    hints.update(pairs)


@dataclass(frozen=True)
class Resolved:
    """One view of one scope resolved to index objects.

    Attributes:
        rows: :data:`RESOLVED_SCHEMA` rows.
        segments: the segment files holding those objects' rows.
        problems: :data:`PROBLEMS_SCHEMA` rows of the files skipped.
        volatile: refs of the sources resolved afresh on every query (runs that may still
            write uncommitted files), whether or not they hold rows of this view yet.
    """

    rows: pa.Table
    segments: tuple[str, ...]
    problems: pa.Table
    volatile: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileRef:
    """One object under ``_flowlake/runs/`` at some ref: its path, checksum and size."""

    path: str
    checksum: str
    size: int


@dataclass(frozen=True)
class Loaded:
    """Where an object's rows are: its ``_oid`` in a segment, or why it has none.

    Attributes:
        oid: the object id its rows carry; None when the object could not be used.
        segment: the segment file holding its rows.
        status: for ``run.parquet`` objects, the recorded status (``running``, ...).
        problem: why the object is skipped (not Parquet, wrong columns), or None.
    """

    oid: int | None
    segment: str | None
    status: str | None
    problem: str | None


def cache_root() -> str:
    """The cache folder: ``$FLOWLAKE_CACHE_DIR``, else ``~/.cache/flowlake``."""
    return os.environ.get("FLOWLAKE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "flowlake"
    )


class Index:
    """The run history index of one lake (see the module docstring).

    Args:
        lake: the lake it indexes.
        root: the cache folder (default :func:`cache_root`).
    """

    def __init__(self, lake: Lake, root: str | None = None) -> None:
        key = hashlib.sha256(f"{INDEX_VERSION}:{lake.location}".encode()).hexdigest()[:20]
        self.folder = os.path.join(root or cache_root(), "tracking", key)
        self.lake = lake
        os.makedirs(os.path.join(self.folder, "segments"), exist_ok=True)
        self._opened: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        # Opened on first use: a lookup answered from memory (a copied run row, a known run
        # branch) never pays for opening SQLite (~1 ms).
        if self._opened is None:
            db = sqlite3.connect(
                os.path.join(self.folder, "index.db"), timeout=60, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._opened = db
        return self._opened

    @property
    def segments_folder(self) -> str:
        """The folder holding every segment file (the only files the views read)."""
        return os.path.join(self.folder, "segments")

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- listings ------------------------------------------------------------------------------

    def listings(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[FileRef]]:
        """The cached listings among ``(commit, prefix)`` keys, read in one statement."""
        if not keys:
            return {}
        rows = self._db.execute(
            "SELECT l.commit_id, l.prefix, l.files FROM json_each(?) j JOIN listings l "
            "ON l.commit_id = json_extract(j.value, '$[0]') "
            "AND l.prefix = json_extract(j.value, '$[1]')",
            (json.dumps(sorted(set(keys))),),
        ).fetchall()
        return {(c, p): _decode_files(files) for c, p, files in rows}

    def listing(self, commit: str, prefix: str) -> list[FileRef]:
        """The files under ``prefix`` at ``commit``: cached, derived from a cached parent plus
        the diff, or listed in full (and cached either way).

        Raises:
            RefNotFoundError: ``commit`` is not a commit of the lake.
        """
        cached = self.listings([(commit, prefix)])
        if cached:
            return cached[(commit, prefix)]
        files = self._derive(commit, prefix)
        if files is None:
            files = [FileRef(o.path, o.checksum, o.size) for o in self.lake.list(commit, prefix)]
        self.remember_listings({(commit, prefix): files})
        return files

    def remember_listings(self, listings: dict[tuple[str, str], list[FileRef]]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO listings VALUES (?, ?, ?)",
                [(c, p, _encode_files(f)) for (c, p), f in listings.items()],
            )

    def _derive(self, commit: str, prefix: str) -> list[FileRef] | None:
        """Parent's listing + diff(parent, commit), when a parent's listing is cached and the
        diff is small; else None."""
        parents = self.lake.commit(commit).parents
        cached = self.listings([(p, prefix) for p in parents])
        for parent in parents:
            if (parent, prefix) not in cached:
                continue
            by_path = {f.path: f for f in cached[(parent, prefix)]}
            changes = [c for c in self.lake.diff(parent, commit) if c.path.startswith(prefix)]
            if len(changes) > max(64, len(by_path) // 4):
                return None
            for change in changes:
                by_path.pop(change.path, None)
                if change.kind.value != "removed":
                    try:
                        info = self.lake.stat(change.path, commit)
                    except ObjectNotFoundError:
                        continue
                    by_path[info.path] = FileRef(info.path, info.checksum, info.size)
            return sorted(by_path.values(), key=lambda f: f.path)
        return None

    # -- resolved views --------------------------------------------------------------------------

    def _resolved_path(self, key: str, view: str) -> str:
        return os.path.join(self.folder, "resolved", f"{key}-{view}.arrow")

    def resolved(self, key: str, view: str) -> Resolved | None:
        """View ``view`` as resolved for scope ``key``, or None when not kept (or when one of
        its segments is gone)."""
        path = self._resolved_path(key, view)
        try:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_file(source).read_all()
        except (FileNotFoundError, pa.ArrowInvalid):
            return None
        meta = table.schema.metadata or {}
        segments = tuple(os.path.join(self.folder, s) for s in json.loads(meta[b"segments"]))
        if not all(os.path.exists(s) for s in segments):
            return None
        problems = pa.Table.from_pylist(json.loads(meta[b"problems"]), schema=PROBLEMS_SCHEMA)
        volatile = tuple(json.loads(meta.get(b"volatile", b"[]")))
        with contextlib.suppress(OSError):
            os.utime(path)
        return Resolved(table.replace_schema_metadata(None), segments, problems, volatile)

    def remember_resolved(self, key: str, view: str, resolved: Resolved) -> None:
        folder = os.path.join(self.folder, "resolved")
        os.makedirs(folder, exist_ok=True)
        meta = {
            "segments": json.dumps([os.path.relpath(s, self.folder) for s in resolved.segments]),
            "problems": json.dumps(resolved.problems.to_pylist()),
            "volatile": json.dumps(list(resolved.volatile)),
        }
        table = resolved.rows.replace_schema_metadata(meta)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, self._resolved_path(key, view))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        kept = sorted(
            (e for e in os.scandir(folder) if e.name.endswith(".arrow")),
            key=lambda e: e.stat().st_mtime,
        )
        for entry in kept[:-MAX_RESOLVED]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)

    # -- runs ----------------------------------------------------------------------------------

    def run_branch(self, run_id: str) -> str | None:
        """The branch a run was last seen writing on, or None (a hint: the caller checks it)."""
        hints = _run_branch_hints.setdefault(self.folder, {})
        found = hints.get(run_id)
        if found is None:
            row = self._db.execute("SELECT branch FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            found = row[0] if row else None
            if found is not None:
                _hint(hints, {run_id: found})
        return found

    def remember_run_branches(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        hints = _run_branch_hints.setdefault(self.folder, {})
        if all(hints.get(r) == b for r, b in pairs):
            return  # this process saw (or wrote) these very hints already
        # Only the runs named: reading the whole table costs ~10 ms at 10,000 runs.
        known = dict(
            self._db.execute(
                "SELECT r.run_id, r.branch FROM json_each(?) j JOIN runs r ON r.run_id = j.value",
                (json.dumps(sorted({r for r, _ in pairs})),),
            ).fetchall()
        )
        new = [(r, b) for r, b in pairs if known.get(r) != b]
        if new:
            with self._write() as db:
                db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", new)
        _hint(hints, dict(pairs))

    # -- objects -------------------------------------------------------------------------------

    def loaded(self, view: str, checksums: Iterable[str]) -> dict[str, Loaded]:
        """What the index knows of each object of ``view`` (absent ones are not loaded yet)."""
        wanted = sorted(set(checksums))
        if not wanted:
            return {}
        rows = self._db.execute(
            "SELECT o.checksum, o.oid, s.path, o.status, o.problem FROM json_each(?) j "
            "JOIN objects o ON o.checksum = j.value AND o.view = ? "
            "LEFT JOIN segments s ON s.id = o.segment",
            (json.dumps(wanted), view),
        ).fetchall()
        return {
            c: Loaded(oid, os.path.join(self.folder, path) if path else None, status, problem)
            for c, oid, path, status, problem in rows
        }

    def _read(self, unique: dict[str, tuple[FileRef, str]]) -> Iterator[tuple[str, bytes]]:
        """Each object's bytes (checksum, bytes), read in batches per ref through
        ``lake.read_many`` (verified, one batch of requests in flight on lakeFS)."""
        by_ref: dict[str, list[tuple[str, FileRef]]] = {}
        for checksum, (file, ref) in unique.items():
            by_ref.setdefault(ref, []).append((checksum, file))
        for ref, files in by_ref.items():
            for start in range(0, len(files), READ_BATCH):
                batch = files[start : start + READ_BATCH]
                found = self.lake.read_many([f.path for _, f in batch], ref)
                for checksum, file in batch:
                    yield checksum, found[file.path]

    def load(
        self,
        view: str,
        schema: pa.Schema,
        objects: Sequence[tuple[FileRef, str]],
        required: Sequence[str],
    ) -> None:
        """Read ``objects`` (each a file and the ref to read it at) through the verified path,
        decode them against ``schema`` and append their rows to a new segment of ``view``.

        An object that is not Parquet, lacks a ``required`` column or does not cast to
        ``schema`` is remembered as a problem instead. Several objects with one checksum are
        read once.

        Raises:
            CorruptObjectError: an object's bytes do not match its hash (the lake is damaged).
        """
        unique: dict[str, tuple[FileRef, str]] = {}
        for file, ref in objects:
            unique.setdefault(file.checksum, (file, ref))
        if not unique:
            return
        tables: list[tuple[str, pa.Table]] = []
        problems: list[tuple[str, str]] = []
        for checksum, data in self._read(unique):
            table, problem = _decode(data, schema, required)
            if problem is not None:
                problems.append((checksum, problem))
            else:
                tables.append((checksum, table))  # type: ignore[arg-type]
        with self._write() as db:
            cursor = db.execute("INSERT INTO segments (view, path) VALUES (?, '')", (view,))
            segment = int(cursor.lastrowid or 0)
            relative = os.path.join("segments", view, f"{segment}.parquet")
            db.executemany(
                "INSERT OR IGNORE INTO objects (checksum, view, problem) VALUES (?, ?, ?)",
                [(c, view, p) for c, p in problems],
            )
            if tables:
                rows = []
                pieces = []
                # Object ids are dense over the whole index (allocated under the write lock), so
                # a view's join on them is a perfect-hash join over a small key range.
                # Never reused: rows of an object another process indexed first stay in this
                # segment unreferenced, and must not match an object indexed later.
                first = db.execute("SELECT value FROM counters WHERE name = 'oid'").fetchone()[0]
                db.execute(
                    "UPDATE counters SET value = ? WHERE name = 'oid'", (first + len(tables),)
                )
                for number, (checksum, table) in enumerate(tables):
                    oid = first + number
                    status = table["status"][0].as_py() if view == "runs" and len(table) else None
                    rows.append((checksum, view, oid, segment, status))
                    pieces.append(table.append_column("_oid", pa.repeat(oid, len(table))))
                _write_segment(os.path.join(self.folder, relative), pa.concat_tables(pieces))
                db.execute("UPDATE segments SET path = ? WHERE id = ?", (relative, segment))
                db.executemany(
                    "INSERT OR IGNORE INTO objects (checksum, view, oid, segment, status) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            else:
                db.execute("DELETE FROM segments WHERE id = ?", (segment,))
        self._compact(view, schema)

    def _compact(self, view: str, schema: pa.Schema) -> None:
        """Merge a view's segments into one when there are too many; readers of the old files
        keep them for an hour (a query in flight elsewhere may still be scanning them)."""
        live = self._db.execute(
            "SELECT id, path FROM segments WHERE view = ? AND retired IS NULL AND path != ''",
            (view,),
        ).fetchall()
        if len(live) <= MAX_SEGMENTS:
            self._sweep()
            return
        ids = [i for i, _ in live]
        referenced = self._db.execute(
            "SELECT oid, segment FROM objects WHERE view = ? AND segment IN "
            "(SELECT value FROM json_each(?))",
            (view, json.dumps(ids)),
        ).fetchall()
        keep = pa.array(sorted(o for o, _ in referenced), pa.int64())
        parts = []
        for _, path in live:
            table = tables.read_file(os.path.join(self.folder, path))
            parts.append(table.filter(pa.compute.is_in(table["_oid"], value_set=keep)))
        merged = pa.concat_tables(parts) if parts else schema.empty_table()
        with self._write() as db:
            cursor = db.execute("INSERT INTO segments (view, path) VALUES (?, '')", (view,))
            segment = int(cursor.lastrowid or 0)
            relative = os.path.join("segments", view, f"{segment}.parquet")
            _write_segment(os.path.join(self.folder, relative), merged)
            db.execute("UPDATE segments SET path = ? WHERE id = ?", (relative, segment))
            # Object ids stay as they are (they are values in the rows); only where they live
            # moves, in the same transaction that retires the old segments.
            db.execute(
                "UPDATE objects SET segment = ? WHERE view = ? AND segment IN "
                "(SELECT value FROM json_each(?))",
                (segment, view, json.dumps(ids)),
            )
            db.execute(
                "UPDATE segments SET retired = ? WHERE id IN (SELECT value FROM json_each(?))",
                (time.time(), json.dumps(ids)),
            )
        self._sweep()

    def _sweep(self) -> None:
        old = self._db.execute(
            "SELECT id, path FROM segments WHERE retired < ?", (time.time() - RETIRED_KEPT_S,)
        ).fetchall()
        for segment, path in old:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.folder, path))
            with self._write() as db:
                db.execute("DELETE FROM segments WHERE id = ?", (segment,))


def _decode(data: bytes, schema: pa.Schema, required: Sequence[str]) -> tuple[Any, str | None]:
    """``(table as schema, None)`` or ``(None, why not)``; missing optional columns are null."""
    try:
        table = tables.read_file(data, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        return None, f"not a readable Parquet file ({exc})"
    if table.schema.equals(schema, check_metadata=False):
        return table, None  # the usual case: written by flowlake with this very schema
    missing = [name for name in required if name not in table.column_names]
    if missing:
        return None, f"lacks the column(s) {', '.join(missing)}"
    columns = []
    for field in schema:
        if field.name in table.column_names:
            try:
                columns.append(table[field.name].cast(field.type))
            except (pa.ArrowException, ValueError) as exc:
                return None, f"column {field.name!r} is not {field.type} ({exc})"
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema), None


def _write_segment(path: str, table: pa.Table) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # Sorted by object so a filter on one run's rows skips most row groups.
            pq.write_table(table.sort_by("_oid"), f, row_group_size=SEGMENT_ROW_GROUP_ROWS)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _encode_files(files: Sequence[FileRef]) -> str:
    return json.dumps([[f.path, f.checksum, f.size] for f in files], separators=(",", ":"))


def _decode_files(text: str) -> list[FileRef]:
    return [FileRef(p, c, s) for p, c, s in json.loads(text)]
