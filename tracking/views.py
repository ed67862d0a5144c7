"""The SQL views over run history, built into one DuckDB connection.

Every view has the columns ``ref``, ``namespace``, ``branch`` and ``commit``: where its rows
were read (see :mod:`tracking.catalog`). File-backed views (``params``, ``tags``, ``metrics``,
``artifacts``, ``environment``, ``code``) read the Parquet objects in place wherever the store
can locate them as local files, and otherwise from bytes read through the store API; the
``runs``, ``commits`` and ``branches`` views are small and built in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from tracking import catalog, layout, liveness
from tracking.catalog import RunFiles, Source

if TYPE_CHECKING:
    from store import Lake

SOURCE_FIELDS = [
    ("ref", pa.string()),
    ("namespace", pa.string()),
    ("branch", pa.string()),
    ("commit", pa.string()),
]
_FILES_SCHEMA = pa.schema([("filename", pa.string()), *SOURCE_FIELDS])

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

VIEW_NAMES = ("runs", *FILE_VIEWS, "commits", "branches")


@dataclass(frozen=True)
class Scope:
    """What a query reads: its sources, the runs found there, and whether it is the live view."""

    sources: tuple[Source, ...]
    runs: tuple[RunFiles, ...]
    live: bool


def scope(lake: Lake, refs: Sequence[str] | None) -> Scope:
    """Every branch (``refs`` None) or the given refs.

    Raises:
        RefNotFoundError: a ref does not resolve.
    """
    live = refs is None
    sources = catalog.live_sources(lake) if refs is None else catalog.ref_sources(lake, refs)
    return Scope(tuple(sources), tuple(catalog.find_runs(lake, sources, live)), live)


def build(con: duckdb.DuckDBPyConnection, lake: Lake, where: Scope, names: set[str]) -> list[str]:
    """Create the views in ``names`` on ``con``; returns the local files they read in place."""
    files: list[str] = []
    for name in names & set(FILE_VIEWS):
        relative, schema = FILE_VIEWS[name]
        entries = [
            (run.source, run.path(f))
            for run in where.runs
            for f in run.files
            if (f.startswith(relative + "/") if name == "metrics" else f == relative)
        ]
        files += _file_view(con, lake, name, schema, entries)
    if "runs" in names:
        files += _runs_view(con, lake, where)
    if "commits" in names:
        _register(con, "commits", _commits_table(lake, where))
    if "branches" in names:
        _register(con, "branches", _branches_table(where))
    return sorted(set(files))


def _file_view(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    name: str,
    schema: pa.Schema,
    entries: list[tuple[Source, str]],
) -> list[str]:
    located: list[dict[str, Any]] = []
    in_memory: list[pa.Table] = []
    for source, path in entries:
        local = lake.locate(path, source.read_ref)
        if local is not None and os.path.isabs(local) and os.path.isfile(local):
            located.append({"filename": local, **_source_row(source)})
        else:
            table = lake.read_table(path, source.read_ref)
            in_memory.append(_with_source(table.cast(schema), source))
    full = pa.schema([*schema, *SOURCE_FIELDS])
    memory = pa.concat_tables(in_memory) if in_memory else full.empty_table()
    con.register(f"_memory_{name}", memory)
    parts = [f"SELECT * FROM _memory_{name}"]
    if located:
        con.register(f"_files_{name}", pa.Table.from_pylist(located, schema=_FILES_SCHEMA))
        # Content-addressed objects: one file may serve several sources, so read each once
        # and let the join repeat its rows once per source.
        paths = sorted({row["filename"] for row in located})
        parts.append(
            "SELECT f.* EXCLUDE (filename), m.* EXCLUDE (filename) "
            f"FROM read_parquet({sql_list(paths)}, filename = true) f "
            f"JOIN _files_{name} m USING (filename)"
        )
    con.execute(f"CREATE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
    return [row["filename"] for row in located]


def _runs_view(con: duckdb.DuckDBPyConnection, lake: Lake, where: Scope) -> list[str]:
    relation = [(run.source, run.path(layout.RUN_FILE)) for run in where.runs]
    files = _file_view(con, lake, "_run_files", layout.RUN_SCHEMA, relation)
    rows = con.sql("SELECT * FROM _run_files").to_arrow_table().to_pylist()
    now = datetime.now(UTC)
    for row in rows:
        row["recorded_status"] = row["status"]
        row["heartbeat_time"] = None
        if row["status"] == "running":
            beat = catalog.heartbeat_time(lake, row["branch"] or row["commit"], row["run_id"])
            row["heartbeat_time"] = beat
            row["status"] = liveness.effective_status(
                "running", row["host"], row["pid"], beat, row["heartbeat_interval"], now
            )
    _register(con, "runs", pa.Table.from_pylist(rows, schema=RUNS_SCHEMA))
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


def _with_source(table: pa.Table, source: Source) -> pa.Table:
    for field_name, value in _source_row(source).items():
        table = table.append_column(field_name, pa.repeat(value, table.num_rows).cast(pa.string()))
    return table


def sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def run_scope(lake: Lake, run_id: str) -> Scope:
    """Only one run, read from its own branch.

    Raises:
        RunNotFoundError: no such run.
    """
    source = catalog.run_source(lake, run_id)
    return Scope((source,), tuple(catalog.find_runs(lake, [source], live=True)), True)
