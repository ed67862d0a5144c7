"""Locked-down DuckDB databases kept across ``tracking.sql`` calls, with the views they hold.

Building the views of a query and opening, locking down and closing an in-memory DuckDB
database cost 10-40 ms, more than a one-run lookup should take. So each process keeps, per
local index folder, a few databases that hold the views built for one *key* (the lake object,
the scope's key and the view names): a later call with the same key runs on that database
without building anything. A key is kept only when its views cannot go stale while the key
stands: the scope's key names every source's commit, no run there may still be writing, no
recorded ``running`` status is judged against the clock, no file was skipped (each query warns
about those). The key changes whenever a branch head does, so moved branches get new views.

Every database is locked down when it is opened, before any view is built
(``enable_external_access = false``, ``lock_configuration = true``, no temporary folder, no
extension loading), with only the index's ``segments/`` folder readable: the views read nothing
else (every lake object enters them through the index's verified path), so a query can read any
segment of its lake's index, which holds only rows already read from that lake through the same
cache folder. A database serves one call at a time, and the caller's statement runs inside a
transaction that is rolled back afterwards, whatever it did (only a single SELECT is accepted
before that, see :mod:`tracking.query`): a call leaves nothing behind for the next.

A kept database is used again only while every segment file its views read is the very file it
was (same inode, size and modification time): segments never change once written, so a file
that differs was deleted and rebuilt, and the views are built afresh.

Queries pinned to one run (``WHERE run_id = ?``) would each need a key of their own, so each
new run id would pay for a new database. Instead each lake object has one more database,
:class:`RunRows`, locked down the same way, holding *copies* of the rows of one-run scopes in
plain tables (``_rows_<view>``, each scope's rows under a small integer ``_scope``). A scope's
rows are copied once, only when they cannot change while its key stands (the key names the
run branch's head commit, see :mod:`tracking.views`): in bulk for every settled run a query
over the live view read (see :mod:`tracking.query`), else by the run's first lookup. A query
reads them through a view created once with its table, which shows the ``_scope`` held in the
DuckDB variable :data:`SCOPE_VARIABLE`, set inside the query's own rolled-back transaction, so
a lookup creates nothing. Such a database holds no Python function, so it never keeps the lake
object alive.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from store import Lake

#: Databases kept per index folder (least recently used closed first); each holds the views
#: of one key (a few MB at 10,000 runs).
MAX_KEPT = 8
#: Index folders whose databases are kept (least recently used dropped first).
MAX_POOLS = 4
#: Rows a :class:`RunRows` database holds before it is replaced by an empty one.
RUN_ROWS_MAX = 4_000_000
#: :class:`RunRows` databases kept per index folder (one per lake object in use).
MAX_RUN_ROWS = 2

_FileId = tuple[str, int, int, int]


@dataclass(frozen=True)
class _Kept:
    con: duckdb.DuckDBPyConnection
    files: tuple[_FileId, ...]
    shaped: bool = False

    def current(self) -> bool:
        return all(_identity(f[0]) == f for f in self.files)


class Borrowed:
    """A database lent for one call.

    Attributes:
        con: the DuckDB connection (locked down).
        ready: it already holds the views built for the call's key (build nothing).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, kept: _Kept | None) -> None:
        self.con = con
        self.kept = kept
        self.ready = kept is not None
        self.discarded = False
        self.settled = False

    def keep(self, files: list[str]) -> None:
        """Keep the database and the views just built on it for later calls with the same
        key; ``files``: the local files those views read."""
        ids = tuple(_identity(f) for f in files)
        if all(i is not None for i in ids):
            self.kept = _Kept(self.con, tuple(i for i in ids if i is not None))

    @property
    def shaped(self) -> bool:
        """Whether the caller already reshaped the kept views (see :meth:`mark_shaped`)."""
        return self.kept is not None and self.kept.shaped

    def mark_shaped(self) -> None:
        """Remember, with the kept database, that the caller reshaped its views (for instance
        copied them into tables on their second use)."""
        if self.kept is not None:
            self.kept = dataclasses.replace(self.kept, shaped=True)

    def discard(self) -> None:
        """Close the database after this call (its state is in doubt)."""
        self.discarded = True

    def settle(self) -> None:
        """Say the caller's statement is over and rolled back: the database may serve again
        even when the call goes on to raise (a query DuckDB rejected)."""
        self.settled = True


class RunRows:
    """A locked-down database holding copies of one-run scopes' rows (see the module
    docstring); lent to one call at a time.

    Each copied view has a table ``_rows_<view>`` and, created with it once, a view ``<view>``
    showing the rows whose ``_scope`` is the value of the DuckDB variable :data:`SCOPE_VARIABLE`
    (set by each lookup, see :meth:`select`): a lookup creates nothing.

    Attributes:
        con: the DuckDB connection.
        tables: the ``_rows_<view>`` tables (and their views) created so far.
        rows: rows held in all tables.
        bulk: keys of the live scopes whose settled runs were copied in bulk.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.tables: set[str] = set()
        self.rows = 0
        self.bulk: set[str] = set()
        self.discarded = False
        self._ids = itertools.count()
        self._scopes: dict[str, int] = {}
        self._copied: set[tuple[str, str]] = set()

    def copied(self, key: str, view: str) -> bool:
        """Whether the rows view ``view`` has for the one-run scope ``key`` are here."""
        return (key, view) in self._copied

    def scope_id(self, key: str) -> int:
        """The ``_scope`` number of scope ``key``'s rows (one per key, in every table)."""
        found = self._scopes.get(key)
        if found is None:
            found = self._scopes[key] = next(self._ids)
        return found

    def added(self, keys: Iterable[str], view: str, rows: int) -> None:
        """Record that ``rows`` rows of view ``view`` were copied for the scopes ``keys``
        (each under its :meth:`scope_id`); the first copy of a view creates its table, then
        its view here."""
        if view not in self.tables:
            self.con.execute(
                f"CREATE VIEW {view} AS SELECT * EXCLUDE (_scope) FROM _rows_{view} "
                f"WHERE _scope = getvariable('{SCOPE_VARIABLE}')"
            )
            self.tables.add(view)
        self._copied.update((key, view) for key in keys)
        self.rows += rows

    def select(self, key: str) -> None:
        """Open a transaction (the caller rolls it back) whose views show scope ``key``."""
        self.con.execute(f"BEGIN TRANSACTION; SET VARIABLE {SCOPE_VARIABLE} = {self.scope_id(key)}")

    def discard(self) -> None:
        """Close the database after this call (its state is in doubt)."""
        self.discarded = True


#: The DuckDB variable naming the ``_scope`` a :class:`RunRows` database's views show.
SCOPE_VARIABLE = "_flowlake_scope"


class Pool:
    """The databases of one index folder; queries on them may read only ``folder``'s files.

    Args:
        folder: an index's ``segments/`` folder, absolute.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[tuple[object, ...], list[_Kept]] = (
            collections.OrderedDict()
        )
        self._run_rows: collections.OrderedDict[int, RunRows] = collections.OrderedDict()
        self._run_rows_lent: set[int] = set()

    def readable(self, files: list[str]) -> bool:
        """Whether queries on this pool's databases may read every one of ``files``."""
        prefix = self.folder.rstrip(os.sep) + os.sep
        return all(os.path.abspath(f).startswith(prefix) for f in files)

    def open(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory database, locked down."""
        con = duckdb.connect(":memory:")
        folder = (self.folder.rstrip(os.sep) + os.sep).replace("'", "''")
        # DuckDB always allows its temporary folder, by default ``.tmp`` under the working
        # directory: a query could read whatever someone keeps there.
        con.execute(
            f"SET allowed_directories = ['{folder}']; "
            "SET temp_directory = ''; "
            "SET autoinstall_known_extensions = false; "
            "SET autoload_known_extensions = false; "
            "SET enable_external_access = false; "
            "SET lock_configuration = true"
        )
        return con

    @contextmanager
    def borrow(self, key: tuple[object, ...] | None) -> Iterator[Borrowed]:
        """Borrow the database kept for ``key``, else a new one (see :class:`Borrowed`). One
        not kept is closed on return, and so is one whose call raised before it settled.

        A database is never emptied for another key: what views register (Python functions
        among them) cannot be listed cheaply, so it could not be proven empty.
        """
        kept = self._take(key) if key is not None else None
        borrowed = Borrowed(kept.con if kept is not None else self.open(), kept)
        try:
            yield borrowed
        except BaseException:
            self._done(key, borrowed, borrowed.settled)
            raise
        self._done(key, borrowed, True)

    @contextmanager
    def run_rows(self, token: int) -> Iterator[RunRows | None]:
        """Borrow the :class:`RunRows` database of the lake object ``token`` (one is opened the
        first time, and replaced by an empty one once it holds :data:`RUN_ROWS_MAX` rows);
        None while another call holds it. It is closed when the caller discards it or is
        interrupted (``KeyboardInterrupt``, ...).
        """
        with self._lock:
            busy = token in self._run_rows_lent
            found = None
            if not busy:
                self._run_rows_lent.add(token)
                found = self._run_rows.pop(token, None)
        if busy:
            yield None
            return
        db: RunRows | None = None
        sound = False
        try:
            if found is not None and found.rows > RUN_ROWS_MAX:
                found.con.close()
                found = None
            db = found if found is not None else RunRows(self.open())
            try:
                yield db
            except Exception:
                # The caller rolls its transaction back and discards the database when that
                # fails, so an error (a query DuckDB rejected) leaves it sound.
                sound = not db.discarded
                raise
            sound = not db.discarded
        finally:
            dropped: list[RunRows] = []
            with self._lock:
                self._run_rows_lent.discard(token)
                if sound and db is not None:
                    self._run_rows[token] = db
                    while len(self._run_rows) > MAX_RUN_ROWS:
                        dropped.append(self._run_rows.popitem(last=False)[1])
            if not sound and db is not None:
                db.con.close()
            for old in dropped:
                old.con.close()

    def _done(self, key: tuple[object, ...] | None, borrowed: Borrowed, sound: bool) -> None:
        if sound and key is not None and borrowed.kept is not None and not borrowed.discarded:
            self._give(key, borrowed.kept)
        else:
            borrowed.con.close()

    def _take(self, key: tuple[object, ...]) -> _Kept | None:
        with self._lock:
            stack = self._kept.get(key)
            kept = stack.pop() if stack else None
            if stack is not None and not stack:
                del self._kept[key]
        if kept is not None and not kept.current():
            kept.con.close()
            return None
        return kept

    def _give(self, key: tuple[object, ...], kept: _Kept) -> None:
        dropped: list[_Kept] = []
        with self._lock:
            self._kept.setdefault(key, []).append(kept)
            self._kept.move_to_end(key)
            while sum(len(v) for v in self._kept.values()) > MAX_KEPT:
                dropped += self._kept.popitem(last=False)[1]
        for old in dropped:
            old.con.close()


_pools: collections.OrderedDict[str, Pool] = collections.OrderedDict()
_pid = os.getpid()
#: Pools inherited through ``fork``: never used (DuckDB is not fork-safe) and never closed here
#: (closing could wait on the parent's threads), only kept referenced.
_inherited: list[Pool] = []
_pools_lock = threading.Lock()
_lake_tokens: weakref.WeakKeyDictionary[Lake, int] = weakref.WeakKeyDictionary()
_tokens = itertools.count()


def pool(folder: str) -> Pool:
    """This process's pool for the index segments under ``folder``."""
    global _pid
    folder = os.path.abspath(folder)
    with _pools_lock:
        if os.getpid() != _pid:
            _inherited.extend(_pools.values())
            _pools.clear()
            _pid = os.getpid()
        found = _pools.get(folder)
        if found is None:
            found = _pools[folder] = Pool(folder)
            while len(_pools) > MAX_POOLS:
                _pools.popitem(last=False)  # its databases close once no call uses them
        _pools.move_to_end(folder)
        return found


def lake_token(lake: Lake) -> int:
    """A number naming this lake object while it lives (never reused): kept views serve only
    calls on the same object, so lakes opened by different users never share them."""
    with _pools_lock:
        token = _lake_tokens.get(lake)
        if token is None:
            token = _lake_tokens[lake] = next(_tokens)
        return token


def _identity(path: str) -> _FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)
