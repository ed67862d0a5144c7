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
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from store.errors import InvalidArgumentError, StoreError
from tracking import history, views
from tracking.errors import QueryError, RunNotFoundError
from tracking.model import RunRecord

if TYPE_CHECKING:
    from store import Lake


def sql(
    lake: Lake,
    query: str,
    ref: str | None = None,
    *,
    refs: Sequence[str] | None = None,
    params: Sequence[Any] | None = None,
) -> pa.Table:
    """Run one SELECT over the views ``runs``, ``params``, ``metrics``, ``tags``,
    ``artifacts``, ``environment``, ``code``, ``commits`` and ``branches``.

    Every view has ``ref``, ``namespace``, ``branch`` and ``commit`` columns saying where its
    rows were read. By default every branch of every namespace is read, each run once (from
    its own branch while it exists), uncommitted writes of live runs included.

    Args:
        lake: the lake.
        query: a single SELECT (``WITH`` allowed).
        ref: read the history as of this ref (branch, tag, commit, ``ref~N``) only.
        refs: read several refs side by side; the ``ref`` column tells their rows apart, so
            ``... GROUP BY ref`` or a self-join on ``ref`` compares them in one query.
        params: values for ``?`` placeholders in ``query``.

    Returns:
        The result as a ``pyarrow.Table``.

    Raises:
        QueryError: the query is not a single SELECT, or DuckDB rejects it (its message).
        RefNotFoundError: a ref does not resolve.
        InvalidArgumentError: both ``ref`` and ``refs`` given.
    """
    if ref is not None and refs is not None:
        raise InvalidArgumentError("give ref or refs, not both")
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty")
    _check_single_select(query)
    where = views.scope(lake, [ref] if ref is not None else refs)
    return run_query(lake, query, where, params)


def run_query(
    lake: Lake, query: str, where: views.Scope, params: Sequence[Any] | None = None
) -> pa.Table:
    """Run one SELECT over the views of ``where`` (see :func:`sql`).

    Raises:
        QueryError: not a single SELECT, or DuckDB rejects it.
    """
    _check_single_select(query)
    names = {name for name in views.VIEW_NAMES if re.search(rf"\b{name}\b", query, re.I)}
    con = duckdb.connect(":memory:")
    try:
        allowed = views.build(con, lake, where, names)
        _lock_down(con, allowed)
        try:
            return con.sql(query, params=list(params) if params else None).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(_message(exc)) from None
    finally:
        con.close()


def get_run(lake: Lake, run_id: str) -> RunRecord:
    """One run as recorded on its own branch, with its reader-side status.

    Raises:
        RunNotFoundError: no such run.
    """
    rows = run_query(lake, "SELECT * FROM runs", views.run_scope(lake, run_id)).to_pylist()
    if not rows:
        raise RunNotFoundError(f"run {run_id} has a branch but no run record")
    return RunRecord.from_row(rows[0])


def get_metric_history(lake: Lake, run_id: str, key: str) -> pa.Table:
    """Every point of one metric of one run (``step``, ``value``, ``timestamp``), ordered by
    ``step`` (nulls first), then ``timestamp``.

    Reads only the run's own branch, uncommitted parts included, with pyarrow rather than SQL
    (see :mod:`tracking.history`); the Parquet parts are read in place where possible.

    Raises:
        RunNotFoundError: no such run.
        InvalidArgumentError: ``key`` is not a string.
    """
    return history.metric_history(lake, run_id, key)


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
        limit: at most this many rows.
    """
    clauses, values = [], []
    if branch is not None:
        full = branch
        with contextlib.suppress(StoreError, ValueError):
            full = lake.get_branch(branch).name
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
        query += f" LIMIT {int(limit)}"
    return run_query(lake, query, views.scope(lake, None), values)


def _check_single_select(query: str) -> None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(_message(exc)) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SELECT statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed; this is a {kind.name} statement")


def _lock_down(con: duckdb.DuckDBPyConnection, allowed: list[str]) -> None:
    if allowed:
        con.execute(f"SET allowed_paths = {views.sql_list(allowed)}")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
