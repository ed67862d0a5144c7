"""Refs, tags, the commit index and uncommitted changes, in one SQLite database (WAL).

Several processes share the database. Branch heads only move by compare-and-swap inside an
immediate transaction, so a writer that read an old head loses cleanly instead of overwriting
another writer's commit. ``synchronous=FULL`` makes every acknowledged transaction durable.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from store.backends.embedded.tree import Entry

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
"""


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


class RefDB:
    """The SQLite database of one lake. Thread-safe; one connection per instance."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        with self.write():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction; commits on a clean exit, else rolls back."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            row: tuple | None = self._conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- branches --------------------------------------------------------------------------------

    def head(self, branch: str) -> str | None:
        row = self._one("SELECT head FROM branches WHERE name = ?", (branch,))
        return row[0] if row else None

    def branches(self) -> dict[str, str]:
        return dict(self._all("SELECT name, head FROM branches ORDER BY name"))

    def protected(self) -> set[str]:
        return {r[0] for r in self._all("SELECT name FROM branches WHERE protected = 1")}

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
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, tree, parents, generation, record, created FROM commits"
            ).fetchall()
        for row in rows:
            yield _commit_row(row[:5]), row[5]

    # -- staging ---------------------------------------------------------------------------------

    def staged(self, branch: str, prefix: str = "") -> tuple[list[StagedChange], int]:
        """A branch's staged changes under ``prefix`` (sorted by path) and the highest seq seen."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT path, entry, inline, seq FROM staging WHERE branch = ? "
                "AND path >= ? AND path < ? ORDER BY path",
                (branch, prefix, prefix + "\U0010ffff"),
            ).fetchall()
            top = conn.execute("SELECT coalesce(max(seq), 0) FROM staging").fetchone()[0]
        return [StagedChange(r[0], _staged_entry(r[0], r[1], r[2])) for r in rows], top

    def staged_one(self, branch: str, path: str) -> tuple[bool, Entry | None]:
        """(is staged, entry or None for a staged deletion)."""
        row = self._one(
            "SELECT entry, inline FROM staging WHERE branch = ? AND path = ?", (branch, path)
        )
        if row is None:
            return False, None
        return True, _staged_entry(path, row[0], row[1])

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
        if up_to_seq is None:
            conn.execute("DELETE FROM staging WHERE branch = ?", (branch,))
        else:
            conn.execute("DELETE FROM staging WHERE branch = ? AND seq <= ?", (branch, up_to_seq))

    def staged_addresses(self) -> set[str]:
        rows = self._all("SELECT entry FROM staging WHERE entry IS NOT NULL")
        return {a for (text,) in rows if (a := json.loads(text)[3]) is not None}

    def integrity_problems(self) -> list[str]:
        rows = self._all("PRAGMA integrity_check")
        return [] if rows == [("ok",)] else [f"sqlite: {r[0]}" for r in rows]


def _commit_row(row: tuple) -> CommitRow:
    return CommitRow(row[0], row[1], tuple(json.loads(row[2])), row[3], bytes(row[4]))


def _entry_json(entry: Entry) -> str:
    return json.dumps([entry.checksum, entry.size, entry.mtime_ns, entry.address])


def _staged_entry(path: str, text: str | None, inline: bytes | None) -> Entry | None:
    if text is None:
        return None
    checksum, size, mtime_ns, address = json.loads(text)
    return Entry(path, checksum, size, mtime_ns, address, None if inline is None else bytes(inline))
