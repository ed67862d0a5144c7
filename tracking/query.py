"""``sql``: read-only DuckDB SQL over the run history of a lake.

Safety does not rest on inspecting the query: the views are built first, then the connection
is locked down (``enable_external_access = false`` with only the lake files the views read
allowed, ``lock_configuration = true``) before the caller's text runs, so a query can neither
read a local file outside the lake nor write anywhere. Accepting only a single SELECT statement
on top turns a mistaken ``COPY`` or ``ATTACH`` into a clear message instead of a permission
error.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import re
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

import duckdb
import pyarrow as pa

from store.errors import InvalidArgumentError, StoreError
from tracking import catalog, connections, history, layout, views
from tracking.errors import QueryError, RunNotFoundError
from tracking.index import Index, Resolved
from tracking.lake_argument import require_lake
from tracking.model import RunRecord, RunStatus

if TYPE_CHECKING:
    from store import Lake


def sql(
    lake: Lake,
    query: str,
    ref: str | None = None,
    *,
    refs: Sequence[str] | None = None,
    params: Sequence[Any] | None = None,
    timeout: float | None = None,
) -> pa.Table:
    """Run one SELECT over the views ``runs``, ``params``, ``metrics``, ``tags``,
    ``artifacts``, ``environment``, ``code``, ``commits``, ``branches`` and ``problems``.

    Every view has ``ref``, ``namespace``, ``branch`` and ``commit`` columns saying where its
    rows were read. By default every branch of every namespace is read, each run once (from
    its own branch while it exists), uncommitted writes of running runs included. A query on
    one view whose ``WHERE`` pins ``run_id = <value>`` reads only that run.

    Args:
        lake: the lake.
        query: a single SELECT (``WITH`` allowed).
        ref: read the history as of this ref (branch, tag, commit, ``ref~N``) only.
        refs: read several refs side by side; the ``ref`` column tells their rows apart, so
            ``... GROUP BY ref`` or a self-join on ``ref`` compares them in one query.
        params: values for ``?`` placeholders in ``query``.
        timeout: seconds the query itself may run (views are built before it starts); None
            for no limit.

    Returns:
        The result as a ``pyarrow.Table``.

    Warns:
        SkippedRunFileWarning: run files that do not decode were skipped (see ``problems``).

    Raises:
        QueryError: the query is not a single SELECT, DuckDB rejects it (its message), or it
            ran longer than ``timeout``.
        RefNotFoundError: a ref does not resolve.
        InvalidArgumentError: ``lake`` is not a Lake, both ``ref`` and ``refs`` given, or a
            bad ``timeout``.
        CorruptObjectError: a run file's stored bytes do not match its hash.
    """
    require_lake(lake, "tracking.sql")
    if ref is not None and refs is not None:
        raise InvalidArgumentError("give ref or refs, not both")
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty")
    _check_timeout(timeout)
    _check_single_select(query)
    with Index(lake) as index:
        where: views.Scope | None = None
        if ref is None and refs is None:
            run_id = _pinned(query, params) if _RUN_ID_TERM.search(query) else None
            if run_id is not None:
                with contextlib.suppress(RunNotFoundError):
                    where = views.run_scope(lake, index, run_id)
        if where is None:
            where = views.scope(lake, index, [ref] if ref is not None else refs)
        return run_query(lake, query, where, params, index=index, timeout=timeout)


def run_query(
    lake: Lake,
    query: str,
    where: views.Scope,
    params: Sequence[Any] | None = None,
    *,
    index: Index,
    timeout: float | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """Run one SELECT over the views of ``where`` (see :func:`sql`).

    Without ``con`` the query runs on this process's locked-down database for the lake's index
    (:mod:`tracking.connections`), reusing views already built for the same lake object, scope
    and view names when their sources cannot have changed, inside a transaction rolled back
    afterwards.

    Args:
        con: a fresh in-memory connection to build the views on (it is locked down and
            closed); None uses the shared database.

    Raises:
        QueryError: not a single SELECT, DuckDB rejects it, or it ran past ``timeout``.
    """
    _check_single_select(query)
    names = frozenset(n for n in views.VIEW_NAMES if re.search(rf"\b{n}\b", query, re.I))
    if con is not None:
        return _run_fresh(con, lake, query, where, params, index, names, timeout)
    pool = connections.pool(index.segments_folder)
    if names and names <= _PRUNABLE and where.live and where.key is not None and _one_run(where):
        answered = _run_on_run_rows(pool, lake, query, where, params, index, names, timeout)
        if answered is not None:
            return answered
    key = (
        (connections.lake_token(lake), where.key, names)
        if where.key is not None and not names & set(views.PLUGGED_VIEWS)
        else None
    )
    with pool.borrow(key) as borrowed:
        con = borrowed.con
        if not borrowed.ready:
            try:
                allowed = views.build(con, lake, index, where, set(names))
            except duckdb.PermissionException:
                allowed = None  # a plugged view reads files outside the index: a fresh database
            if allowed is None or not pool.readable(allowed):
                borrowed.discard()
                fresh = duckdb.connect(":memory:")
                return _run_fresh(fresh, lake, query, where, params, index, names, timeout)
            if key is not None and _stable(index, where, names):
                borrowed.keep(allowed)
            if where.live and where.key is not None and "runs" in names and not _one_run(where):
                _remember_live(pool, lake, index, where)
        elif not borrowed.shaped and _one_run(where):
            _materialize(con, names)  # on second use: a run looked up once never pays for it
            borrowed.mark_shaped()
        con.execute("BEGIN TRANSACTION")
        try:
            return _execute(con, query, params, timeout)
        finally:
            try:
                con.execute("ROLLBACK")
                borrowed.settle()
            except duckdb.Error:
                borrowed.discard()


def _run_on_run_rows(
    pool: connections.Pool,
    lake: Lake,
    query: str,
    where: views.Scope,
    params: Sequence[Any] | None,
    index: Index,
    names: frozenset[str],
    timeout: float | None,
) -> pa.Table | None:
    """Answer a query over one settled run on the lake object's :class:`~tracking.connections.
    RunRows` database, or None when that cannot be done (the run may still write or has
    skipped files, or another call holds it).

    The run's rows are usually there already: a query over the live view copies every settled
    run's rows in bulk (:func:`_copy_settled_runs`), and a miss first copies those of the last
    live view resolved if that was not done. Otherwise only this run's rows are copied. Rows
    are kept under the one-run scope's key, which names the run branch's head commit, so a
    moved branch gets a new copy.
    """
    assert where.key is not None
    with pool.run_rows(connections.lake_token(lake)) as db:
        if db is None:
            return None
        key = where.key
        missing = [n for n in sorted(names) if not db.copied(key, n)]
        live = _last_live.get(lake)
        if missing and live is not None and live.key is not None and live.key not in db.bulk:
            _copy_settled_runs(db, lake, index, live)
            if db.discarded:
                return None
            missing = [n for n in missing if not db.copied(key, n)]
        for name in missing:
            resolved = views.resolved_view(lake, index, where, name, remember=False)
            if not _settled(name, resolved):
                return None
            try:
                copied = views.copy_run_rows(
                    db.con, name, resolved, db.scope_id(key), create=name not in db.tables
                )
                db.added([key], name, copied)
            except BaseException:
                db.discard()  # rows half recorded: never read them
                raise
        con = db.con
        try:
            db.select(key)
            return _execute(con, query, params, timeout)
        finally:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                db.discard()


#: Per lake object: the last live scope whose views were built (its settled runs' rows are
#: copied in bulk into a :class:`~tracking.connections.RunRows` database that lacks them).
_last_live: weakref.WeakKeyDictionary[Lake, views.Scope] = weakref.WeakKeyDictionary()
#: Views copied in bulk for every settled run of a live scope: one row per run.
BULK_VIEWS = ("runs",)


def _remember_live(pool: connections.Pool, lake: Lake, index: Index, where: views.Scope) -> None:
    """After the views of the live scope ``where`` were built: copy its settled runs' rows
    into the lake object's run rows database, so that a later lookup of any of them copies
    nothing."""
    _last_live[lake] = where
    with pool.run_rows(connections.lake_token(lake)) as db:
        if db is not None and where.key not in db.bulk:  # views rebuilt for the same key
            _copy_settled_runs(db, lake, index, where)


def _copy_settled_runs(
    db: connections.RunRows, lake: Lake, index: Index, live: views.Scope
) -> None:
    """Copy into ``db``, in one batch per view of :data:`BULK_VIEWS`, the rows of every run
    the live scope ``live`` reads on its own branch and that cannot change while that branch
    does not move (no uncommitted writes, no ``running`` record, no skipped file), each under
    its one-run scope's key (:func:`views.run_key`); runs already copied under that key are
    skipped. Uses the views as resolved when ``live`` was built (the index keeps them)."""
    assert live.key is not None
    db.bulk.add(live.key)
    for name in BULK_VIEWS:
        resolved = index.resolved(live.key, name)
        if resolved is None:
            continue
        unsettled = {*resolved.volatile, *resolved.problems.column("ref").to_pylist()}
        rows = resolved.rows
        running = rows.filter(pa.compute.equal(rows["status"], "running"))
        unsettled.update(running.column("ref").to_pylist())
        scopes: dict[str, int] = {}
        keys: dict[str, str] = {}
        owners = [(run_id, s.ref) for s in live.sources if (run_id := catalog.own_run(s))]
        index.remember_run_branches(owners)  # a lookup then finds its branch without SQLite
        for source in live.sources:
            if source.ref in unsettled or catalog.own_run(source) is None:
                continue
            key = views.run_key(source)
            if not db.copied(key, name):
                scopes[source.ref] = db.scope_id(key)
                keys[source.ref] = key
        present = set(rows.column("ref").to_pylist()) & scopes.keys()
        scopes = {ref: scopes[ref] for ref in present}
        if not scopes:
            continue
        try:
            copied = views.copy_settled_rows(
                db.con, name, resolved, scopes, create=name not in db.tables
            )
            db.added((keys[ref] for ref in scopes), name, copied)
        except (duckdb.Error, pa.ArrowException, OSError):
            # A segment deleted meanwhile (the index may go at any moment): lookups copy
            # their own rows instead, on a new database.
            db.discard()
            return
        except BaseException:
            db.discard()
            raise


def _run_fresh(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    query: str,
    where: views.Scope,
    params: Sequence[Any] | None,
    index: Index,
    names: frozenset[str],
    timeout: float | None,
) -> pa.Table:
    try:
        allowed = views.build(con, lake, index, where, set(names))
        _lock_down(con, allowed)
        return _execute(con, query, params, timeout)
    finally:
        con.close()


def _execute(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: Sequence[Any] | None,
    timeout: float | None,
) -> pa.Table:
    timer = threading.Timer(timeout, con.interrupt) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        return con.sql(query, params=list(params) if params else None).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryError(f"the query ran longer than its timeout ({timeout} s)") from None
    except duckdb.Error as exc:
        raise QueryError(_message(exc) + _view_hint(exc)) from None
    finally:
        if timer is not None:
            timer.cancel()


#: DuckDB's words for a table that is not there; its own candidate is one of its catalog
#: tables, since views are built only for the view names a query mentions.
_UNKNOWN_TABLE = re.compile(r"Table with name (\S+) does not exist")


def _view_hint(exc: duckdb.Error) -> str:
    """For a query naming a table that does not exist: a line naming the flowlake views
    closest to that name (all of them when none is close); else ``""``."""
    found = _UNKNOWN_TABLE.search(str(exc)) if isinstance(exc, duckdb.CatalogException) else None
    if found is None:
        return ""
    name = found.group(1).strip("\"'")
    views_list = ", ".join(views.VIEW_NAMES)
    close = difflib.get_close_matches(name.lower(), views.VIEW_NAMES, n=3)
    if not close:
        return f"\nflowlake has no view {name!r}; its views: {views_list}"
    return f"\nflowlake views closest to {name!r}: {', '.join(close)} (all: {views_list})"


#: A kept one-run view with at most this many rows is copied into DuckDB's memory when it is
#: used a second time (a lookup then reads a small table instead of scanning index segments:
#: ~0.5 ms instead of ~3 ms of DuckDB time).
MATERIALIZE_ROWS = 200_000


def _one_run(where: views.Scope) -> bool:
    return len(where.sources) == 1 and catalog.own_run(where.sources[0]) is not None


def _materialize(con: duckdb.DuckDBPyConnection, names: frozenset[str]) -> None:
    """Replace each named run view of ``con`` by a table of its rows, when it is small.

    Only for one run read on its own branch with a kept key: the rows cannot change while the
    key stands, and no column is computed lazily from the lake for such a run.
    """
    for name in sorted(names & {"runs", *views.FILE_VIEWS}):
        row = con.execute(f"SELECT count(*) FROM {name}").fetchone()
        if row is None or row[0] > MATERIALIZE_ROWS:
            continue
        con.execute(
            f"CREATE TABLE _rows_{name} AS SELECT * FROM {name}; DROP VIEW {name}; "
            f"ALTER TABLE _rows_{name} RENAME TO {name}"
        )


def _stable(index: Index, where: views.Scope, names: frozenset[str]) -> bool:
    """Whether views built for ``where`` stay right while its key does: no source whose run
    may still write, no recorded ``running`` status judged against the clock, no skipped file
    (each query warns about those)."""
    if where.key is None:
        return False
    wanted = (
        {"runs", *views.FILE_VIEWS} if "problems" in names else names & {"runs", *views.FILE_VIEWS}
    )
    return all(_settled(name, index.resolved(where.key, name)) for name in wanted)


def _settled(name: str, resolved: Resolved | None) -> bool:
    """Whether a view resolved this way stays right while its scope's key does."""
    if resolved is None or resolved.volatile or resolved.problems.num_rows:
        return False
    return name != "runs" or "running" not in resolved.rows.column("status").to_pylist()


def get_run(lake: Lake, run_id: str) -> RunRecord:
    """One run as recorded on its own branch, with its reader-side status (the row
    ``SELECT * FROM runs WHERE run_id = ?`` returns, read without a DuckDB connection).
    ``run_id`` may be a unique prefix of at least 4 hex digits (``flowlake runs`` shows 8).

    Raises:
        RunNotFoundError: no such run.
        AmbiguousRefError: several runs start with the prefix given.
        InvalidArgumentError: ``lake`` is not a Lake.
    """
    require_lake(lake, "tracking.get_run")
    run_id = catalog.complete_run_id(lake, run_id)
    with Index(lake) as index:
        row = views.run_record(lake, index, run_id)
    if row is None:
        raise RunNotFoundError(f"run {run_id} has a branch but no run record")
    return RunRecord.from_row(row)


def get_metric_history(lake: Lake, run_id: str, key: str) -> pa.Table:
    """Every point of one metric of one run (``step``, ``value``, ``timestamp``), ordered by
    ``step`` (nulls first), then ``timestamp``.

    Reads only the run's own branch, uncommitted parts included, with pyarrow rather than SQL
    (see :mod:`tracking.history`); the Parquet parts are read in place where possible.

    Raises:
        RunNotFoundError: no such run.
        InvalidArgumentError: ``lake`` is not a Lake or ``key`` is not a string.
    """
    require_lake(lake, "tracking.get_metric_history")
    return history.metric_history(lake, catalog.complete_run_id(lake, run_id), key)


def search_runs(
    lake: Lake,
    branch: str | None = None,
    status: str | None = None,
    name: str | None = None,
    limit: int | None = None,
) -> pa.Table:
    """Runs of every namespace, newest first, optionally filtered.

    Args:
        branch: runs started on this branch (a bare name means the current namespace's, else
            production's) or written on it.
        status: ``running``, ``finished``, ``failed``, ``killed`` or ``stale``.
        name: a substring of the run name (case-insensitive).
        limit: at most this many rows (>= 0).

    Raises:
        InvalidArgumentError: ``lake`` is not a Lake, ``status`` is not a run status (the
            valid ones are named), ``branch`` or ``name`` is not a string, or ``limit`` is not
            an int >= 0.
        BranchNotFoundError: ``branch`` does not exist and no run was started on or written to
            a branch of that name (a deleted branch's runs are still found by its full name).
    """
    require_lake(lake, "tracking.search_runs")
    for label, value in (("branch", branch), ("name", name)):
        if value is not None and not isinstance(value, str):
            raise InvalidArgumentError(f"{label} must be a string, got {value!r}")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidArgumentError(
            f"unknown run status {status!r}: give one of {', '.join(RUN_STATUSES)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidArgumentError(f"limit must be an int >= 0, got {limit!r}")
    clauses, values = [], []
    missing: StoreError | None = None
    if branch is not None:
        full = branch
        try:
            full = lake.get_branch(branch).name
        except StoreError as exc:
            missing = exc  # a deleted branch's runs still name it: refused only if none do
        clauses.append("(target_branch = ? OR run_branch = ? OR target_branch = ?)")
        values += [full, full, branch]
    if status is not None:
        clauses.append("status = ?")
        values.append(status)
    if name is not None:
        clauses.append("contains(lower(name), lower(?))")
        values.append(name)
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    query = (
        "SELECT run_id, name, status, target_branch, run_namespace, user, start_time, end_time, "
        f"input_commit, output_commit FROM runs {where}ORDER BY start_time DESC"
    )
    if limit is not None:
        query += f" LIMIT {limit}"
    with Index(lake) as index:
        scope = views.scope(lake, index, None)
        found = run_query(lake, query, scope, values, index=index)
        if (
            missing is not None
            and not found.num_rows
            and not _names_a_run_branch(lake, index, scope, branch)
        ):
            raise missing
        return found


#: Every status a run can show in the ``runs`` view.
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


def _names_a_run_branch(lake: Lake, index: Index, scope: views.Scope, branch: str | None) -> bool:
    """Whether some run of ``scope`` was started on or written to ``branch`` (whatever the
    other filters), so that an empty answer about a deleted branch is not called an error."""
    found = run_query(
        lake,
        "SELECT 1 FROM runs WHERE target_branch = ? OR run_branch = ? LIMIT 1",
        scope,
        [branch, branch],
        index=index,
    )
    return found.num_rows > 0


def _check_single_select(query: str) -> None:
    problem = _statement_problem(query)
    if problem is not None:
        raise QueryError(problem)


@functools.lru_cache(maxsize=256)
def _statement_problem(query: str) -> str | None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        return _message(exc)
    if len(statements) != 1:
        return f"give exactly one SELECT statement, not {len(statements)}"
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        return f"only SELECT queries are allowed; this is a {kind.name} statement"
    return None


def pinned_run(
    con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None
) -> str | None:
    """The run id a query is limited to, when it reads one view with a top-level
    ``WHERE ... run_id = <literal or ?> [AND ...]``; else None (the query reads everything).

    Conservative: any join, subquery, set operation or second table means None.
    """
    try:
        rows = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
        tree = json.loads(rows[0][0]) if rows else {}
    except (duckdb.Error, ValueError):
        return None
    return _pinned_in(tree, params)


def _pinned(query: str, params: Sequence[Any] | None) -> str | None:
    """:func:`pinned_run` with each query text parsed once per process."""
    return _pinned_in(_parsed(query), params)


@functools.lru_cache(maxsize=256)
def _parsed(query: str) -> Any:
    with _parser_lock:
        global _parser
        if _parser is None:
            _parser = duckdb.connect(":memory:")
            _parser.execute("SET enable_external_access = false; SET lock_configuration = true")
        try:
            rows = _parser.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
            return json.loads(rows[0][0]) if rows else {}
        except (duckdb.Error, ValueError):
            return {}


_parser: duckdb.DuckDBPyConnection | None = None
_parser_lock = threading.Lock()


def _pinned_in(tree: Any, params: Sequence[Any] | None) -> str | None:
    if not isinstance(tree, dict) or tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0]["node"]
    tables = _base_tables(tree)
    source = node.get("from_table") or {}
    if (
        node.get("type") != "SELECT_NODE"
        or len(tables) != 1
        or source.get("type") != "BASE_TABLE"
        or source.get("table_name", "").lower() not in _PRUNABLE
        or node.get("cte_map", {}).get("map")
    ):
        return None
    alias = source.get("alias") or source["table_name"]
    for term in _conjuncts(node.get("where_clause")):
        value = _run_id_equality(term, alias, params)
        if value is not None:
            return value if layout.is_run_id(value) else None
    return None


_PRUNABLE = {"runs", *views.FILE_VIEWS}
#: Only a query with such a term can be pinned; others skip parsing.
_RUN_ID_TERM = re.compile(r"\brun_id\s*=", re.I)


def _base_tables(tree: Any) -> list[str]:
    found: list[str] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in ("BASE_TABLE", "TABLE_FUNCTION", "SUBQUERY", "JOIN"):
                found.append(str(item.get("table_name", item.get("type"))))
            if item.get("class") == "SUBQUERY":
                found.append("subquery")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _conjuncts(expression: Any) -> list[Any]:
    if not isinstance(expression, dict):
        return []
    if expression.get("type") == "CONJUNCTION_AND":
        return [t for child in expression.get("children", []) for t in _conjuncts(child)]
    return [expression]


def _run_id_equality(term: Any, alias: str, params: Sequence[Any] | None) -> str | None:
    if term.get("type") != "COMPARE_EQUAL":
        return None
    for column, value in (
        (term.get("left"), term.get("right")),
        (term.get("right"), term.get("left")),
    ):
        names = column.get("column_names") if isinstance(column, dict) else None
        if not names or names[-1].lower() != "run_id" or (len(names) == 2 and names[0] != alias):
            continue
        if len(names) > 2:
            continue
        if value.get("class") == "CONSTANT" and value.get("literal", {}).get("kind") == "VARCHAR":
            return str(value["literal"].get("text"))
        if value.get("class") == "PARAMETER" and params:
            position = int(value.get("identifier", "0")) - 1
            if 0 <= position < len(params) and isinstance(params[position], str):
                return params[position]
    return None


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")


def _lock_down(con: duckdb.DuckDBPyConnection, allowed: list[str]) -> None:
    settings = [f"SET allowed_paths = {views.sql_list(allowed)}"] if allowed else []
    # DuckDB always allows its temporary folder, by default ``.tmp`` under the working
    # directory: a query could read whatever someone keeps there.
    settings += [
        "SET temp_directory = ''",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ]
    con.execute("; ".join(settings))  # one call: each call into DuckDB has a fixed cost


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
