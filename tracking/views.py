"""The SQL views over run history, built into one DuckDB connection.

Every view has the columns ``ref``, ``namespace``, ``branch`` and ``commit``: where its rows
were read (see :mod:`tracking.catalog`). File-backed views (``runs``, ``params``, ``tags``,
``metrics``, ``artifacts``, ``environment``, ``code``) never hand DuckDB a lake object: each
object is read once through the store's verified path into the local index
(:mod:`tracking.index`), and the view joins the index's large segment files with a small table
saying which objects each source holds. A run file that does not decode is skipped and listed in
the ``problems`` view (with a :class:`~tracking.errors.SkippedRunFileWarning`), so one bad file
never fails a query; a damaged object (hash mismatch) raises ``CorruptObjectError``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from tracking import catalog, layout, liveness
from tracking.catalog import RunFiles, Source
from tracking.errors import SkippedRunFileWarning
from tracking.index import FileRef, Index

if TYPE_CHECKING:
    from store import Lake

SOURCE_FIELDS = [
    ("ref", pa.string()),
    ("namespace", pa.string()),
    ("branch", pa.string()),
    ("commit", pa.string()),
]
_SOURCES_SCHEMA = pa.schema([("_oid", pa.int64()), *SOURCE_FIELDS])

#: File-backed views: name -> (file in the run folder, schema). ``metrics`` reads every part.
FILE_VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "params": (layout.PARAMS_FILE, layout.KEY_VALUE_SCHEMA),
    "tags": (layout.TAGS_FILE, layout.KEY_VALUE_SCHEMA),
    "artifacts": (layout.ARTIFACTS_FILE, layout.ARTIFACTS_SCHEMA),
    "environment": (layout.ENVIRONMENT_FILE, layout.ENVIRONMENT_SCHEMA),
    "code": (layout.CODE_FILE, layout.CODE_SCHEMA),
    "metrics": (layout.METRICS_DIR, layout.METRICS_SCHEMA),
}

RUNS_SCHEMA = pa.schema(
    [
        *[f for f in layout.RUN_SCHEMA if f.name != "status"],
        ("status", pa.string()),
        ("recorded_status", pa.string()),
        ("heartbeat_time", pa.timestamp("us", tz="UTC")),
        *SOURCE_FIELDS,
    ]
)

COMMITS_SCHEMA = pa.schema(
    [
        ("message", pa.string()),
        ("committer", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("parents", pa.list_(pa.string())),
        ("metadata", pa.map_(pa.string(), pa.string())),
        ("run_id", pa.string()),
        ("event", pa.string()),
        *SOURCE_FIELDS,
    ]
)

BRANCHES_SCHEMA = pa.schema([*SOURCE_FIELDS, ("protected", pa.bool_()), ("run_id", pa.string())])

#: Views other tracking modules build: name -> ``"module:function"``, called as
#: ``function(con, lake, sources, live, names) -> local files read`` and imported only when a
#: query names one of its views.
PLUGGED_VIEWS = {
    "deployments": "tracking.deployment_views:build",
    "deployment_metrics": "tracking.deployment_views:build",
}

PROBLEMS_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("path", pa.string()), ("problem", pa.string()), *SOURCE_FIELDS]
)

VIEW_NAMES = ("runs", *FILE_VIEWS, "commits", "branches", "problems", *PLUGGED_VIEWS)

#: Columns a run file must have to be used (others missing are read as nulls).
_REQUIRED = {"runs": catalog.RUN_RECORD_REQUIRED, "metrics": ("run_id", "key", "value")}
_LIVE_SCHEMA = pa.schema(
    [
        ("_oid", pa.int64()),
        ("ref", pa.string()),
        ("status", pa.string()),
        ("heartbeat_time", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Scope:
    """What a query reads: its sources, the runs found there, and whether it is the live view."""

    sources: tuple[Source, ...]
    runs: tuple[RunFiles, ...]
    live: bool


def scope(lake: Lake, index: Index, refs: Sequence[str] | None) -> Scope:
    """Every branch (``refs`` None) or the given refs.

    Raises:
        RefNotFoundError: a ref does not resolve.
    """
    live = refs is None
    sources = catalog.live_sources(lake) if refs is None else catalog.ref_sources(lake, refs)
    found = catalog.find_runs(lake, index, sources, live)
    if live:
        index.remember_run_branches(
            (run.run_id, run.source.ref) for run in found if catalog.own_run(run.source)
        )
    return Scope(tuple(sources), tuple(found), live)


def run_scope(lake: Lake, index: Index, run_id: str) -> Scope:
    """Only one run, read from its own branch (what the live view reads for it).

    Raises:
        RunNotFoundError: no such run.
    """
    source = catalog.run_source(lake, run_id, index)
    return Scope((source,), tuple(catalog.find_runs(lake, index, [source], live=True)), True)


def build(
    con: duckdb.DuckDBPyConnection, lake: Lake, index: Index, where: Scope, names: set[str]
) -> list[str]:
    """Create the views in ``names`` on ``con``; returns the local files they read (index
    segments and whatever plugged views read), for the connection's ``allowed_paths``.

    Raises:
        CorruptObjectError: a run file's bytes do not match its hash.
    """
    files: list[str] = []
    problems: list[dict[str, Any]] = []
    file_views = set(FILE_VIEWS) if "problems" in names else names & set(FILE_VIEWS)
    for name in sorted(file_views):
        relative, schema = FILE_VIEWS[name]
        entries = [
            (run, f)
            for run in where.runs
            for f in run.files
            if (
                run.relative(f).startswith(relative + "/")
                if name == "metrics"
                else run.relative(f) == relative
            )
        ]
        files += _file_view(con, index, name, name, schema, entries, problems)
    if "runs" in names or "problems" in names:
        files += _runs_view(con, lake, index, where, problems)
    if "commits" in names:
        _register(con, "commits", _commits_table(lake, where))
    if "branches" in names:
        _register(con, "branches", _branches_table(where))
    _register(con, "problems", pa.Table.from_pylist(problems, schema=PROBLEMS_SCHEMA))
    if problems:
        shown = "; ".join(f"{p['path']} at {p['ref']}: {p['problem']}" for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        warnings.warn(
            f"skipped {len(problems)} unreadable run file(s), see the problems view: {shown}{more}",
            SkippedRunFileWarning,
            stacklevel=4,
        )
    for target in sorted({PLUGGED_VIEWS[n] for n in names & set(PLUGGED_VIEWS)}):
        module, _, function = target.partition(":")
        plugged = getattr(importlib.import_module(module), function)
        files += plugged(con, lake, where.sources, where.live, names)
    return sorted(set(files))


def _loaded(
    index: Index, name: str, schema: pa.Schema, entries: Sequence[tuple[Source, FileRef]]
) -> dict[str, Any]:
    """Load the objects of ``entries`` the index does not have yet; returns what it knows."""
    known = index.loaded(name, (f.checksum for _, f in entries))
    missing = [(f, s.read_ref) for s, f in entries if f.checksum not in known]
    if missing:
        index.load(name, schema, missing, _REQUIRED.get(name, ("run_id",)))
        known = index.loaded(name, (f.checksum for _, f in entries))
    return known


def _file_view(
    con: duckdb.DuckDBPyConnection,
    index: Index,
    name: str,
    kind: str,
    schema: pa.Schema,
    entries: Sequence[tuple[RunFiles, FileRef]],
    problems: list[dict[str, Any]],
) -> list[str]:
    """``CREATE VIEW name``: the rows of the entries' objects (stored in the index as
    ``kind``), each with its source columns."""
    known = _loaded(index, kind, schema, [(run.source, f) for run, f in entries])
    rows: list[dict[str, Any]] = []
    segments: set[str] = set()
    for run, file in entries:
        state = known.get(file.checksum)
        if state is None:
            continue
        if state.oid is None or state.segment is None:
            problems.append(
                {
                    "run_id": run.run_id,
                    "path": file.path,
                    "problem": state.problem,
                    **_source_row(run.source),
                }
            )
            continue
        segments.add(state.segment)
        rows.append({"_oid": state.oid, **_source_row(run.source)})
    _create_joined(con, name, schema, rows, sorted(segments))
    return sorted(segments)


def _create_joined(
    con: duckdb.DuckDBPyConnection,
    name: str,
    schema: pa.Schema,
    rows: list[dict[str, Any]],
    segments: list[str],
) -> None:
    con.register(f"_sources_{name}", pa.Table.from_pylist(rows, schema=_SOURCES_SCHEMA))
    columns = ", ".join(f'd."{f.name}"' for f in schema)
    if segments:
        data = f"read_parquet({sql_list(segments)}, hive_partitioning = false)"
    else:
        con.register(f"_empty_{name}", pa.schema([*schema, ("_oid", pa.int64())]).empty_table())
        data = f"_empty_{name}"
    con.execute(
        f"CREATE VIEW {name} AS SELECT {columns}, s.ref, s.namespace, s.branch, s.commit"
        f"{', s._oid' if name.startswith('_') else ''} "
        f"FROM {data} d JOIN _sources_{name} s ON d._oid = s._oid"
    )


def _runs_view(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    index: Index,
    where: Scope,
    problems: list[dict[str, Any]],
) -> list[str]:
    """``runs``: every run record, with the status a reader should believe (``running`` runs
    whose process or heartbeat is gone show ``killed`` or ``stale``)."""
    entries = [(run, f) for run in where.runs if (f := run.file(layout.RUN_FILE)) is not None]
    files = _file_view(con, index, "_run_records", "runs", layout.RUN_SCHEMA, entries, problems)
    known = index.loaded("runs", (f.checksum for _, f in entries))
    running = {
        state.oid: run
        for run, f in entries
        if (state := known.get(f.checksum)) is not None and state.status == "running"
    }
    live: list[dict[str, Any]] = []
    if running:
        now = datetime.now(UTC)
        records = con.sql(
            "SELECT _oid, run_id, host, pid, heartbeat_interval FROM "
            f"read_parquet({sql_list(files)}, hive_partitioning = false) "
            f"WHERE _oid IN ({', '.join(str(o) for o in running)})"
        ).fetchall()
        for oid, run_id, host, pid, interval in records:
            run = running[oid]
            beat = catalog.heartbeat_time(lake, run.source.read_ref, run_id)
            status = liveness.effective_status("running", host, pid, beat, interval, now)
            live.append(
                {"_oid": oid, "ref": run.source.ref, "status": status, "heartbeat_time": beat}
            )
    con.register("_live_runs", pa.Table.from_pylist(live, schema=_LIVE_SCHEMA))
    columns = []
    for field in RUNS_SCHEMA:
        if field.name == "status":
            columns.append("coalesce(l.status, r.status) AS status")
        elif field.name == "recorded_status":
            columns.append("r.status AS recorded_status")
        elif field.name == "heartbeat_time":
            columns.append("l.heartbeat_time")
        else:
            columns.append(f'r."{field.name}"')
    con.execute(
        f"CREATE VIEW runs AS SELECT {', '.join(columns)} FROM _run_records r "
        "LEFT JOIN _live_runs l ON l._oid = r._oid AND l.ref = r.ref"
    )
    return files


def _commits_table(lake: Lake, where: Scope) -> pa.Table:
    rows = []
    for source, commit in catalog.reachable_commits(lake, where.sources, where.live):
        metadata = dict(commit.metadata)
        rows.append(
            {
                "message": commit.message,
                "committer": commit.committer,
                "timestamp": commit.timestamp,
                "parents": list(commit.parents),
                "metadata": list(metadata.items()),
                "run_id": metadata.get("tracking.run_id"),
                "event": metadata.get("tracking.event"),
                **_source_row(source),
                "commit": commit.id,
            }
        )
    return pa.Table.from_pylist(rows, schema=COMMITS_SCHEMA)


def _branches_table(where: Scope) -> pa.Table:
    rows = []
    for source in where.sources:
        if source.branch is None:
            continue
        short = source.branch.rsplit("/", 1)[-1]
        run_id = short[len(layout.RUN_BRANCH_PREFIX) :]
        rows.append(
            {
                **_source_row(source),
                "protected": source.protected,
                "run_id": run_id
                if short.startswith(layout.RUN_BRANCH_PREFIX) and layout.is_run_id(run_id)
                else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=BRANCHES_SCHEMA)


def _register(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    con.register(f"_memory_{name}", table)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _memory_{name}")


def _source_row(source: Source) -> dict[str, Any]:
    return {
        "ref": source.ref,
        "namespace": source.namespace,
        "branch": source.branch,
        "commit": source.commit,
    }


def sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
