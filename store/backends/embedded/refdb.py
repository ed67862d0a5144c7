"""Refs, tags, the commit index and uncommitted changes, in one SQLite database (WAL).

Several processes share the database. Branch heads only move by compare-and-swap inside an
immediate transaction, so a writer that read an old head loses cleanly instead of overwriting
another writer's commit. ``synchronous=FULL`` makes every acknowledged transaction durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from store.backends.embedded import layout
from store.backends.embedded.tree import Entry
from store.errors import LakeClosedError, RefsDatabaseError, StoreError

_HEX = "0123456789abcdef"

SCHEMA = """
CREATE TABLE IF NOT EXISTS branches (
    name TEXT PRIMARY KEY,
    head TEXT NOT NULL,
    protected INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT PRIMARY KEY,
    commit_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    id TEXT PRIMARY KEY,
    tree TEXT NOT NULL,
    parents TEXT NOT NULL,
    generation INTEGER NOT NULL,
    record BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS staging (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    branch TEXT NOT NULL,
    path TEXT NOT NULL,
    entry TEXT,
    inline BLOB,
    UNIQUE (branch, path)
);
CREATE TABLE IF NOT EXISTS staged_batches (
    seq INTEGER PRIMARY KEY,
    branch TEXT NOT NULL,
    object TEXT NOT NULL,
    count INTEGER NOT NULL,
    first TEXT NOT NULL,
    last TEXT NOT NULL
);
"""
#: The highest staged seq of either table (rows and batches share one sequence).
_TOP_SEQ = (
    "SELECT max(coalesce((SELECT max(seq) FROM staging), 0), "
    "coalesce((SELECT max(seq) FROM staged_batches), 0))"
)


@dataclass(frozen=True)
class CommitRow:
    """A commit as indexed: id, tree id, parents, generation and its canonical JSON record."""

    id: str
    tree: str
    parents: tuple[str, ...]
    generation: int
    record: bytes


@dataclass(frozen=True)
class StagedChange:
    """An uncommitted change: the new entry, or None for a deletion."""

    path: str
    entry: Entry | None


@dataclass(frozen=True)
class StagedBatch:
    """A large ``put_many`` staged as one object: a table of entries sorted by unique path.

    Attributes:
        seq: its place in the branch's staging order; shared with staged rows, so whichever of
            a row and a batch holding the same path was staged later wins.
        object_id: the content id of the batch object (range format, zstd).
        count: how many entries it holds.
        first: its smallest path.
        last: its largest path.
    """

    seq: int
    object_id: str
    count: int
    first: str
    last: str

    def covers(self, path: str) -> bool:
        return self.first <= path <= self.last


class RefDB:
    """The SQLite database of one lake. Thread-safe; one connection per instance."""

    def __init__(self, path: str) -> None:
        """Open (creating when absent) the database at ``path``.

        Raises:
            RefsDatabaseError: the file is not a usable SQLite database.
        """
        self.path = path
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                path, timeout=60, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            with self._translated():
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA busy_timeout=60000")
            with self.write():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._closed = True

    _closed = False

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """The store error for a failure of SQLite (the one place they are translated)."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return RefsDatabaseError(f"refs database {self.path} stayed locked: {exc}")
        if self._closed and isinstance(exc, sqlite3.ProgrammingError):
            lake = os.path.dirname(self.path)
            return LakeClosedError(f"the lake at {lake} was closed: open it again with store.open")
        return RefsDatabaseError(f"refs database {self.path} is damaged or unreadable: {exc}")

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _rollback(self) -> None:
        # After some errors SQLite has rolled the transaction back itself.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction; commits on a clean exit, else rolls back.

        Raises:
            RefsDatabaseError: SQLite failed (also for statements run on the yielded connection).
        """
        with self._lock, self._translated():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot.

        Raises:
            RefsDatabaseError: SQLite failed.
        """
        with self._lock, self._translated():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._rollback()

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock, self._translated():
            row: tuple | None = self._conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, self._translated():
            return self._conn.execute(sql, args).fetchall()

    # -- branches --------------------------------------------------------------------------------

    def head(self, branch: str) -> str | None:
        row = self._one("SELECT head FROM branches WHERE name = ?", (branch,))
        return row[0] if row else None

    def branches(self) -> dict[str, str]:
        return dict(self._all("SELECT name, head FROM branches ORDER BY name"))

    def protected(self) -> set[str]:
        return {r[0] for r in self._all("SELECT name FROM branches WHERE protected = 1")}

    def head_protected(self, branch: str) -> tuple[str, bool] | None:
        """(head, whether protected) of a branch, or None when there is no such branch."""
        row = self._one("SELECT head, protected FROM branches WHERE name = ?", (branch,))
        return (row[0], bool(row[1])) if row else None

    def is_protected(self, branch: str) -> bool:
        row = self._one("SELECT protected FROM branches WHERE name = ?", (branch,))
        return bool(row and row[0])

    def insert_branch(self, conn: sqlite3.Connection, name: str, head: str) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO branches (name, head, created) VALUES (?, ?, ?)",
            (name, head, time.time()),
        )
        return cur.rowcount == 1

    def move_head(self, conn: sqlite3.Connection, name: str, expected: str, new: str) -> bool:
        """Compare-and-swap a head inside ``conn``'s write transaction."""
        cur = conn.execute(
            "UPDATE branches SET head = ? WHERE name = ? AND head = ?", (new, name, expected)
        )
        return cur.rowcount == 1

    # -- tags ------------------------------------------------------------------------------------

    def tags(self) -> dict[str, str]:
        return dict(self._all("SELECT name, commit_id FROM tags ORDER BY name"))

    def tag(self, name: str) -> str | None:
        row = self._one("SELECT commit_id FROM tags WHERE name = ?", (name,))
        return row[0] if row else None

    # -- commits ---------------------------------------------------------------------------------

    def commit(self, commit_id: str) -> CommitRow | None:
        row = self._one(
            "SELECT id, tree, parents, generation, record FROM commits WHERE id = ?", (commit_id,)
        )
        return _commit_row(row) if row else None

    def commit_record(self, commit_id: str) -> bytes | None:
        """The record column of a commit's row alone, whatever its other columns hold (fsck
        follows a record that hashes to its id past a row whose columns are damaged); None
        when there is no row or the column holds no bytes."""
        row = self._one("SELECT record FROM commits WHERE id = ?", (commit_id,))
        return row[0] if row and isinstance(row[0], bytes) else None

    def commits_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        upper = prefix + "\uffff"
        rows = self._all(
            "SELECT id FROM commits WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, upper, limit),
        )
        return [r[0] for r in rows]

    def insert_commit(self, conn: sqlite3.Connection, row: CommitRow) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO commits (id, tree, parents, generation, record, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (row.id, row.tree, json.dumps(row.parents), row.generation, row.record, time.time()),
        )

    def all_commits(self) -> Iterator[tuple[CommitRow, float]]:
        rows = self._all("SELECT id, tree, parents, generation, record, created FROM commits")
        for row in rows:
            yield _commit_row(row[:5]), row[5]

    def commit_ids_since(self, created_after: float) -> list[str]:
        """Ids of the commits indexed at or after ``created_after`` (epoch seconds)."""
        rows = self._all("SELECT id FROM commits WHERE created >= ?", (created_after,))
        return [r[0] for r in rows]

    def commit_ids_before(self, created_before: float) -> list[str]:
        """Ids of the commits indexed before ``created_before`` (epoch seconds)."""
        rows = self._all("SELECT id FROM commits WHERE created < ?", (created_before,))
        return [r[0] for r in rows]

    # -- staging ---------------------------------------------------------------------------------

    def staged(
        self, branch: str, prefix: str = ""
    ) -> tuple[list[tuple[int, StagedChange]], list[StagedBatch], int]:
        """A branch's staged rows under ``prefix`` as (seq, change) sorted by path, its staged
        batches that may hold paths under ``prefix`` (by seq), and the highest seq seen; all
        read in one snapshot.

        Raises:
            RefsDatabaseError: a staged row is damaged.
        """
        end = prefix + "\U0010ffff"
        with self.read() as conn:
            rows = conn.execute(
                "SELECT path, entry, inline, seq FROM staging WHERE branch = ? "
                "AND path >= ? AND path < ? ORDER BY path",
                (branch, prefix, end),
            ).fetchall()
            batches = _batches(
                conn.execute(
                    "SELECT seq, object, count, first, last FROM staged_batches WHERE branch = ? "
                    "AND last >= ? AND first < ? ORDER BY seq",
                    (branch, prefix, end),
                ).fetchall()
            )
            top = conn.execute(_TOP_SEQ).fetchone()[0]
        changes = [(r[3], StagedChange(r[0], _staged_entry(r[0], r[1], r[2]))) for r in rows]
        return changes, batches, top

    def staged_one(self, branch: str, path: str) -> tuple[int, Entry | None, list[StagedBatch]]:
        """A path's staged row as (seq or 0 when none, entry or None), and the branch's staged
        batches newer than that row that may hold the path, newest first.

        Raises:
            RefsDatabaseError: the row is damaged.
        """
        with self.read() as conn:
            row = conn.execute(
                "SELECT entry, inline, seq FROM staging WHERE branch = ? AND path = ?",
                (branch, path),
            ).fetchone()
            seq = 0 if row is None else row[2]
            batches = _batches(
                conn.execute(
                    "SELECT seq, object, count, first, last FROM staged_batches WHERE branch = ? "
                    "AND seq > ? AND first <= ? AND last >= ? ORDER BY seq DESC",
                    (branch, seq, path, path),
                ).fetchall()
            )
        return seq, None if row is None else _staged_entry(path, row[0], row[1]), batches

    def stage_batch(
        self,
        conn: sqlite3.Connection,
        branch: str,
        object_id: str,
        count: int,
        first: str,
        last: str,
    ) -> int:
        """Record a staged batch after every change staged so far; returns its seq.

        Rows staged later must sort after it, so the rows' AUTOINCREMENT counter is moved up to
        the batch's seq in the same transaction.
        """
        seq = (
            1
            + conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'staging'), 0), "
                "coalesce((SELECT max(seq) FROM staged_batches), 0))"
            ).fetchone()[0]
        )
        conn.execute(
            "INSERT INTO staged_batches (seq, branch, object, count, first, last) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (seq, branch, object_id, count, first, last),
        )
        if (
            conn.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'staging'", (seq,)
            ).rowcount
            == 0
        ):
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('staging', ?)", (seq,))
        return seq

    def stage(self, conn: sqlite3.Connection, branch: str, changes: Iterable[StagedChange]) -> None:
        """Record changes; a later write of a path replaces the earlier (and gets a new seq)."""
        conn.executemany(
            "INSERT OR REPLACE INTO staging (branch, path, entry, inline) VALUES (?, ?, ?, ?)",
            (
                (
                    branch,
                    c.path,
                    None if c.entry is None else _entry_json(c.entry),
                    None if c.entry is None else c.entry.inline,
                )
                for c in changes
            ),
        )

    def clear_staged(self, conn: sqlite3.Connection, branch: str, up_to_seq: int | None) -> None:
        for table in ("staging", "staged_batches"):
            if up_to_seq is None:
                conn.execute(f"DELETE FROM {table} WHERE branch = ?", (branch,))
            else:
                conn.execute(
                    f"DELETE FROM {table} WHERE branch = ? AND seq <= ?", (branch, up_to_seq)
                )

    def staged_addresses(self, after_seq: int = 0) -> tuple[set[str], list[StagedBatch], int]:
        """Object addresses of the rows staged with a seq above ``after_seq``, the batches
        staged after it (whose objects and entries the caller reads), and the highest seq seen
        (seqs only grow, so a caller can ask again for what is new).

        Raises:
            RefsDatabaseError: a staged row is damaged.
        """
        with self.read() as conn:
            rows = conn.execute(
                "SELECT path, entry, inline FROM staging WHERE seq > ? AND entry IS NOT NULL",
                (after_seq,),
            ).fetchall()
            batches = _batches(
                conn.execute(
                    "SELECT seq, object, count, first, last FROM staged_batches WHERE seq > ?",
                    (after_seq,),
                ).fetchall()
            )
            top = conn.execute(_TOP_SEQ).fetchone()[0]
        found = (_staged_entry(path, text, inline) for path, text, inline in rows)
        addresses = {e.address for e in found if e is not None and e.address is not None}
        return addresses, batches, top

    def integrity_problems(self) -> list[str]:
        """SQLite's own integrity check, one line per problem (empty when sound)."""
        try:
            rows = self._all("PRAGMA integrity_check")
        except RefsDatabaseError as exc:
            return [str(exc)]
        return [] if rows == [("ok",)] else [f"refs database: {r[0]}" for r in rows]

    def damaged_rows(self) -> list[str]:
        """One line per row of any table that holds values flowlake never writes (for fsck).

        Raises:
            RefsDatabaseError: a table cannot be read at all.
        """
        problems: list[str] = []
        for name, head, protected in self._all("SELECT name, head, protected FROM branches"):
            if not isinstance(name, str) or not name:
                problems.append(f"refs database: branch row with name {name!r}")
            if not _is_id(head):
                problems.append(f"branch {name!r}: head {head!r} is not a commit id")
            if protected not in (0, 1):
                problems.append(f"branch {name!r}: protected flag {protected!r} is not 0 or 1")
        for name, commit_id in self._all("SELECT name, commit_id FROM tags"):
            if not isinstance(name, str) or not name:
                problems.append(f"refs database: tag row with name {name!r}")
            if not _is_id(commit_id):
                problems.append(f"tag {name!r}: {commit_id!r} is not a commit id")
        for row in self._all("SELECT id, tree, parents, generation, record FROM commits"):
            try:
                _commit_row(row)
            except RefsDatabaseError as exc:
                problems.append(str(exc))
        for branch, path, text, inline in self._all(
            "SELECT branch, path, entry, inline FROM staging"
        ):
            try:
                if not isinstance(branch, str) or not isinstance(path, str) or not path:
                    raise RefsDatabaseError(f"staged row ({branch!r}, {path!r}) is damaged")
                _staged_entry(path, text, inline)
            except RefsDatabaseError as exc:
                problems.append(f"branch {branch!r}: {exc}")
        for row in self._all("SELECT branch, seq, object, count, first, last FROM staged_batches"):
            if not isinstance(row[0], str):
                problems.append(f"refs database: staged batch row with branch {row[0]!r}")
            try:
                _batches([row[1:]])
            except RefsDatabaseError as exc:
                problems.append(f"branch {row[0]!r}: {exc}")
        return problems


def _is_id(value: object) -> bool:
    # str.strip over the hex digits: the same test as a regex, a few times faster per row.
    return isinstance(value, str) and len(value) == 64 and not value.strip(_HEX)


def _commit_row(row: tuple) -> CommitRow:
    """A commits-table row as a CommitRow.

    Raises:
        RefsDatabaseError: a column holds a value flowlake never writes.
    """
    commit_id, tree, parents, generation, record = row
    try:
        parent_ids = tuple(json.loads(parents))
    except (TypeError, ValueError):
        parent_ids = ("<not JSON>",)
    if (
        not _is_id(commit_id)
        or not _is_id(tree)
        or not all(_is_id(p) for p in parent_ids)
        or not isinstance(generation, int)
        or generation < 1
        or not isinstance(record, bytes)
    ):
        raise RefsDatabaseError(
            f"commit {commit_id!r}: its index row is damaged (tree {tree!r}, "
            f"parents {parents!r}, generation {generation!r})"
        )
    return CommitRow(commit_id, tree, parent_ids, generation, record)


def _batches(rows: list[tuple]) -> list[StagedBatch]:
    """staged_batches rows (seq, object, count, first, last) as StagedBatch values.

    Raises:
        RefsDatabaseError: a column holds a value flowlake never writes.
    """
    batches = []
    for seq, object_id, count, first, last in rows:
        if not (
            isinstance(seq, int)
            and _is_id(object_id)
            and isinstance(count, int)
            and count > 0
            and isinstance(first, str)
            and isinstance(last, str)
            and first <= last
        ):
            raise RefsDatabaseError(
                f"staged batch {seq!r}: its row is damaged (object {object_id!r}, count "
                f"{count!r}, paths {first!r}..{last!r})"
            )
        batches.append(StagedBatch(seq, object_id, count, first, last))
    return batches


def _entry_json(entry: Entry) -> str:
    # JSON written by hand: checksums and addresses are hex and '/', never needing escapes, and
    # json.dumps would cost a third of staging a large batch.
    address = "null" if entry.address is None else f'"{entry.address}"'
    return f'["{entry.checksum}",{entry.size},{entry.mtime_ns},{address}]'


def _parse_entry_json(text: str) -> tuple[Any, Any, Any, Any]:
    """(checksum, size, mtime_ns, address) of a staged row, as :func:`_entry_json` writes it.

    Rows this code writes are split directly; anything else goes through ``json.loads``.
    Either way the values are checked by the caller.
    """
    parts = text[1:-1].split(",") if text[:2] == '["' and text[-1:] == "]" else []
    if len(parts) == 4 and parts[0][-1:] == '"':
        address = parts[3].strip()
        return (
            parts[0][1:-1],
            int(parts[1]),
            int(parts[2]),
            None if address == "null" else address[1:-1] if address[:1] == '"' else address,
        )
    checksum, size, mtime_ns, address = json.loads(text)
    return checksum, size, mtime_ns, address


def _staged_entry(path: str, text: str | None, inline: bytes | None) -> Entry | None:
    """A staged row's entry, or None for a staged deletion.

    Raises:
        RefsDatabaseError: the row holds values flowlake never writes.
    """
    if text is None:
        return None
    try:
        checksum, size, mtime_ns, address = _parse_entry_json(text)
        if address is not None:
            layout.parse_address(address)
        valid = (
            _is_id(checksum)
            and isinstance(size, int)
            and isinstance(mtime_ns, int)
            and (address is not None or isinstance(inline, bytes))
            and (inline is None or isinstance(inline, bytes))
        )
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise RefsDatabaseError(f"staged change {path!r}: its row is damaged ({text!r})")
    return Entry(path, checksum, size, mtime_ns, address, None if inline is None else bytes(inline))
