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

import collections
import functools
import hashlib
import importlib
import os
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb.func import FunctionNullHandling

from store.errors import StoreError
from tracking import catalog, layout, liveness
from tracking.catalog import RunFiles, Source
from tracking.errors import SkippedRunFileWarning
from tracking.index import PROBLEMS_SCHEMA, RESOLVED_SCHEMA, FileRef, Index, Resolved

if TYPE_CHECKING:
    from store import Commit, Lake
    from store.model import BranchInfo

SOURCE_FIELDS = [
    ("ref", pa.string()),
    ("namespace", pa.string()),
    ("branch", pa.string()),
    ("commit", pa.string()),
]

#: File-backed views whose files hold no run id (a run's manifests, the same bytes for every run
#: with the same files or packages): name -> the files' schema. A row's ``run_id`` is that of
#: the run folder its file was found in; the ``run_id`` column of files written before the
#: manifests lost it (always the folder's) is not read.
FOLDER_RUN_ID_VIEWS: dict[str, pa.Schema] = {
    "environment": layout.ENVIRONMENT_SCHEMA,
    "code": layout.CODE_SCHEMA,
}


def _with_run_id(schema: pa.Schema) -> pa.Schema:
    return pa.schema([("run_id", pa.string()), *schema])


#: File-backed views: name -> (file in the run folder, the view's columns before the source
#: columns). ``metrics`` reads every part.
FILE_VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "params": (layout.PARAMS_FILE, layout.KEY_VALUE_SCHEMA),
    "tags": (layout.TAGS_FILE, layout.KEY_VALUE_SCHEMA),
    "artifacts": (layout.ARTIFACTS_FILE, layout.ARTIFACTS_SCHEMA),
    "environment": (layout.ENVIRONMENT_FILE, _with_run_id(layout.ENVIRONMENT_SCHEMA)),
    "code": (layout.CODE_FILE, _with_run_id(layout.CODE_SCHEMA)),
    "metrics": (layout.METRICS_DIR, layout.METRICS_SCHEMA),
}


def stored_schema(name: str) -> pa.Schema:
    """The columns the index keeps for the objects of view ``name`` (``runs`` or a file view):
    the view's own, less ``run_id`` for :data:`FOLDER_RUN_ID_VIEWS`."""
    if name == "runs":
        return layout.RUN_SCHEMA
    return FOLDER_RUN_ID_VIEWS.get(name) or FILE_VIEWS[name][1]


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

VIEW_NAMES = ("runs", *FILE_VIEWS, "commits", "branches", "problems", *PLUGGED_VIEWS)

#: Columns a run file must have to be used (others missing are read as nulls).
_REQUIRED = {
    "runs": catalog.RUN_RECORD_REQUIRED,
    "metrics": ("run_id", "key", "value"),
    "environment": ("name",),
    "code": ("path",),
}
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
    """What a query reads: its sources and whether it is the live view.

    Attributes:
        sources: where run data is read from.
        live: the live view (each run once, from its own branch while that exists).
        key: identifies what the sources hold (their commits), so views resolved for it can be
            reused; None when a source has uncommitted run files outside a run's own branch.
    """

    sources: tuple[Source, ...]
    live: bool
    key: str | None


def scope(lake: Lake, index: Index, refs: Sequence[str] | None) -> Scope:
    """Every branch (``refs`` None) or the given refs.

    Raises:
        RefNotFoundError: a ref does not resolve.
    """
    if refs is not None:
        return _keyed(lake, tuple(catalog.ref_sources(lake, refs)), False)
    branches = lake.branches(all_namespaces=True)
    cached = _live_scopes.get(lake)
    if cached is None or cached[0] != branches:  # ~2 ms at 10,000 branches, hashing ~20
        sources = tuple(catalog.sources_of(branches))
        others = tuple(s.branch for s in sources if s.branch is not None and not catalog.own_run(s))
        cached = (branches, sources, _digest(sources, True), others)
        _live_scopes[lake] = cached
    _, sources, digest, others = cached
    # Uncommitted run files outside a run's own branch are not named by any head: never kept.
    clean = not any(catalog.dirty(lake, branch) for branch in others)
    return Scope(sources, True, digest if clean else None)


#: Per lake object: the last live listing, its sources, their digest and the branches that are
#: not a run's own (whose uncommitted run files are checked on every query).
_live_scopes: weakref.WeakKeyDictionary[
    Lake, tuple[list[BranchInfo], tuple[Source, ...], str, tuple[str, ...]]
] = weakref.WeakKeyDictionary()


def run_scope(lake: Lake, index: Index, run_id: str) -> Scope:
    """Only one run, read from its own branch (what the live view reads for it).

    Raises:
        RunNotFoundError: no such run.
    """
    return _keyed(lake, (catalog.run_source(lake, run_id, index),), True)


@functools.lru_cache(maxsize=1 << 16)
def run_key(source: Source) -> str:
    """The key :func:`run_scope` gives a run read on its own branch ``source`` (``source`` as
    the live view lists it): the key its copied rows are kept under (see
    :func:`copy_settled_rows`). Memoized: a listing of 10,000 run branches asks for each."""
    return _digest((source,), True)


def _keyed(lake: Lake, sources: tuple[Source, ...], live: bool) -> Scope:
    cacheable = not any(
        s.branch is not None and not (live and catalog.own_run(s)) and catalog.dirty(lake, s.branch)
        for s in sources
    )
    if not cacheable:
        return Scope(sources, live, None)
    return Scope(sources, live, _digest(sources, live))


def _digest(sources: Sequence[Source], live: bool) -> str:
    digest = hashlib.sha256(f"{live}".encode())
    for s in sources:
        digest.update(f"\n{s.ref}\t{s.namespace}\t{s.branch}\t{s.commit}\t{s.read_ref}".encode())
    return digest.hexdigest()[:32]


class _Runs:
    """The runs of a scope, found on first use (a query answered from resolved views that are
    all cached never lists anything)."""

    def __init__(self, lake: Lake, index: Index, where: Scope) -> None:
        self.lake, self.index, self.where = lake, index, where
        self._all: list[RunFiles] | None = None

    def all(self) -> list[RunFiles]:
        if self._all is None:
            self._all = catalog.find_runs(
                self.lake, self.index, self.where.sources, self.where.live
            )
            if self.where.live:
                self.index.remember_run_branches(
                    (r.run_id, r.source.ref) for r in self._all if catalog.own_run(r.source)
                )
        return self._all

    def of(self, refs: set[str]) -> list[RunFiles]:
        sources = [s for s in self.where.sources if s.ref in refs]
        return catalog.find_runs(self.lake, self.index, sources, self.where.live)


def build(
    con: duckdb.DuckDBPyConnection, lake: Lake, index: Index, where: Scope, names: set[str]
) -> list[str]:
    """Create the views in ``names`` on ``con``; returns the local files they read (index
    segments and whatever plugged views read), for the connection's ``allowed_paths``.

    Raises:
        CorruptObjectError: a run file's bytes do not match its hash.
    """
    files: list[str] = []
    problems: list[pa.Table] = []
    runs = _Runs(lake, index, where)
    wanted = set(FILE_VIEWS) | {"runs"} if "problems" in names else names & {"runs", *FILE_VIEWS}
    for name in sorted(wanted):
        resolved = _resolved(index, runs, name)
        problems.append(resolved.problems)
        files += resolved.segments
        if name == "runs":
            _runs_view(con, lake, resolved, where.live)
        else:
            _create_joined(con, name, FILE_VIEWS[name][1], resolved)
    if "commits" in names:
        register_table(con, "commits", _commits_table(lake, where))
    if "branches" in names:
        register_table(con, "branches", _branches_table(where))
    found = pa.concat_tables(problems) if problems else PROBLEMS_SCHEMA.empty_table()
    if "problems" in names:
        register_table(con, "problems", found)
    if found.num_rows:
        listed = found.slice(0, 3).to_pylist()
        shown = "; ".join(f"{p['path']} at {p['ref']}: {p['problem']}" for p in listed)
        more = f" (and {found.num_rows - 3} more)" if found.num_rows > 3 else ""
        warnings.warn(
            f"skipped {found.num_rows} unreadable run file(s), see the problems view: "
            f"{shown}{more}",
            SkippedRunFileWarning,
            stacklevel=4,
        )
    for target in sorted({PLUGGED_VIEWS[n] for n in names & set(PLUGGED_VIEWS)}):
        module, _, function = target.partition(":")
        plugged = getattr(importlib.import_module(module), function)
        files += plugged(con, lake, where.sources, where.live, names)
    return sorted(set(files))


def resolved_view(
    lake: Lake, index: Index, where: Scope, name: str, *, remember: bool = True
) -> Resolved:
    """View ``name`` (``runs`` or a file view) of ``where`` resolved to index objects, the
    objects loaded into the index first (see :func:`build`); ``remember``: keep the result in
    the index for the scope's key (a caller that copies the rows needs it only once).

    Raises:
        CorruptObjectError: a run file's bytes do not match its hash.
    """
    return _resolved(index, _Runs(lake, index, where), name, remember=remember)


def copy_run_rows(
    con: duckdb.DuckDBPyConnection, name: str, resolved: Resolved, scope_id: int, *, create: bool
) -> int:
    """Append the rows view ``name`` has for one run read on its own branch in the live view
    to table ``_rows_<name>`` of ``con`` (``create``: create it), each with ``_scope =
    scope_id``; the table has the view's columns, then ``_scope``.

    Only for a resolved scope with nothing volatile and no ``running`` record: the copy holds
    the ``runs`` columns a reader would see (a final record read at its own run branch's head
    has that head as its output commit, see :func:`_output_commit_sql`), and nothing in it is
    judged against the clock.

    Returns:
        The rows copied.
    """
    if resolved.volatile or "running" in resolved.rows.column("status").to_pylist():
        raise ValueError("only a settled run's rows can be copied")
    schema = layout.RUN_SCHEMA if name == "runs" else FILE_VIEWS[name][1]
    folder = name in FOLDER_RUN_ID_VIEWS
    rows = _sourced_rows(resolved, schema, folder)
    if rows is None:  # a segment too large to keep in memory: DuckDB reads it
        sources = resolved.rows.select(_source_columns(folder))
        rows = _joined_rows(con, sources, resolved.segments, schema, folder)
    if name == "runs":
        rows = _settled_runs_columns(rows)
    scopes = pa.repeat(pa.scalar(scope_id, pa.int32()), len(rows))
    _append_rows(con, name, rows.append_column("_scope", scopes), create)
    return len(rows)


def copy_settled_rows(
    con: duckdb.DuckDBPyConnection,
    name: str,
    resolved: Resolved,
    scopes: Mapping[str, int],
    *,
    create: bool,
) -> int:
    """:func:`copy_run_rows` for many runs at once: the rows view ``name`` of a live scope
    (``resolved``) has for each source named in ``scopes`` (the run's own branch, by ``ref``)
    are appended to ``_rows_<name>`` with ``_scope = scopes[ref]``, in one join and one
    ``INSERT`` whatever the number of runs. Rows of other sources are left out.

    Returns:
        The rows copied.

    Raises:
        ValueError: a named source may still write (volatile) or records ``running``.
    """
    picked = resolved.rows.filter(pa.compute.is_in(resolved.rows["ref"], pa.array(list(scopes))))
    if set(resolved.volatile) & scopes.keys() or "running" in picked["status"].to_pylist():
        raise ValueError("only settled runs' rows can be copied")
    ids = pa.array([scopes[ref] for ref in picked["ref"].to_pylist()], pa.int32())
    folder = name in FOLDER_RUN_ID_VIEWS
    sources = picked.select(_source_columns(folder)).append_column("_scope", ids)
    schema = layout.RUN_SCHEMA if name == "runs" else FILE_VIEWS[name][1]
    rows = _joined_rows(con, sources, resolved.segments, schema, folder)
    copied = _settled_runs_columns(rows) if name == "runs" else rows.drop_columns(["_scope"])
    _append_rows(con, name, copied.append_column("_scope", rows["_scope"]), create)
    return len(rows)


def _source_columns(folder: bool) -> list[str]:
    """The resolved rows' columns a copy of a view's rows needs (``folder``: the view takes
    ``run_id`` from the run folder, see :data:`FOLDER_RUN_ID_VIEWS`)."""
    return ["_oid", *(["run_id"] if folder else []), *(f for f, _ in SOURCE_FIELDS)]


def _data_columns(schema: pa.Schema, folder: bool) -> list[str]:
    """The SQL of a view's columns (``schema``) over segment rows ``d`` joined to their
    sources ``s`` (``folder``: ``run_id`` is the source's, see :data:`FOLDER_RUN_ID_VIEWS`)."""
    return ['s."run_id"' if folder and f.name == "run_id" else f'd."{f.name}"' for f in schema]


def _joined_rows(
    con: duckdb.DuckDBPyConnection,
    sources: pa.Table,
    segments: Sequence[str],
    schema: pa.Schema,
    folder: bool = False,
) -> pa.Table:
    """The segment rows (``schema``'s columns) of each object in ``sources`` (``_oid`` then
    further columns), followed by that source row's further columns, read by DuckDB on ``con``
    (which may read the index's segments). ``folder``: the view takes ``run_id`` from the run
    folder (:data:`FOLDER_RUN_ID_VIEWS`), given by the ``run_id`` column of ``sources``."""
    extra = [
        sources.schema.field(c)
        for c in sources.column_names
        if c != "_oid" and not (folder and c == "run_id")
    ]
    shape = pa.schema([*schema, *extra])
    if not segments or not sources.num_rows:
        return shape.empty_table()
    con.register("_copy_sources", sources)
    data = f"read_parquet({sql_list(segments)}, hive_partitioning = false)"
    columns = _data_columns(schema, folder) + [f's."{f.name}"' for f in extra]
    select = f"SELECT {', '.join(columns)} FROM {data} d JOIN _copy_sources s USING (_oid)"
    try:
        return con.sql(select).to_arrow_table().cast(shape)
    finally:
        con.unregister("_copy_sources")


def _append_rows(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table, create: bool) -> None:
    con.register("_copy_rows", rows)
    try:
        if create:
            con.execute(f"CREATE TABLE _rows_{name} AS SELECT * FROM _copy_rows").fetchall()
        else:
            con.execute(f"INSERT INTO _rows_{name} SELECT * FROM _copy_rows").fetchall()
    finally:
        con.unregister("_copy_rows")


def _sourced_rows(resolved: Resolved, schema: pa.Schema, folder: bool) -> pa.Table | None:
    """The rows of the objects ``resolved`` names (``schema``'s columns), each with its
    source's ``ref``, ``namespace``, ``branch`` and ``commit``; None when a segment is too
    large to keep in memory. ``folder``: ``run_id`` is the run folder's (see
    :data:`FOLDER_RUN_ID_VIEWS`)."""
    pieces = [pa.schema([*schema, *SOURCE_FIELDS]).empty_table()]
    sources = resolved.rows.select(_source_columns(True)).to_pylist()
    kept = [_segment(path) for path in resolved.segments]
    for source in sources:
        for found in kept:
            if found is None:
                return None
            table, spans = found
            span = spans.get(source["_oid"])
            if span is None:
                continue
            piece = table.slice(*span)
            if folder:
                run_ids = pa.repeat(pa.scalar(source["run_id"], pa.string()), len(piece))
                piece = piece.append_column("run_id", run_ids)
            piece = piece.select(schema.names)
            for field, type_ in SOURCE_FIELDS:
                piece = piece.append_column(
                    field, pa.repeat(pa.scalar(source[field], type_), len(piece))
                )
            pieces.append(piece)
    return pa.concat_tables(pieces)


def _settled_runs_columns(rows: pa.Table) -> pa.Table:
    """The ``runs`` view's columns of settled records read on their own run branch (see
    :func:`copy_run_rows`)."""
    pc = pa.compute
    status = rows.column("status")
    derived = pc.and_(
        pc.is_null(rows.column("output_commit")), pc.is_in(status, pa.array(sorted(FINAL_STATUSES)))
    )
    columns = {
        "status": status,
        "recorded_status": status,
        "heartbeat_time": pa.nulls(len(rows), pa.timestamp("us", tz="UTC")),
        "output_commit": pc.if_else(derived, rows.column("commit"), rows.column("output_commit")),
    }
    return pa.table(
        [columns[f.name] if f.name in columns else rows.column(f.name) for f in RUNS_SCHEMA],
        schema=RUNS_SCHEMA,
    )


#: Segments of at most this many rows are kept in memory (by file identity) for keyed reads,
#: at most twice as many rows in all (least recently used dropped first; ~50 bytes a row).
SEGMENT_CACHE_ROWS = 1_000_000
_segment_cache: collections.OrderedDict[
    tuple[str, int, int, int], tuple[pa.Table, dict[int, tuple[int, int]]]
] = collections.OrderedDict()
_segment_lock = threading.Lock()


def object_rows(resolved: Resolved, schema: pa.Schema) -> pa.Table | None:
    """The segment rows (``schema`` plus ``_oid``) of the objects ``resolved`` names, sliced
    out of segments kept in memory with each object's span (segments are written sorted by
    ``_oid`` and never change under one file identity); None when a segment is too large to
    keep (:data:`SEGMENT_CACHE_ROWS`) or gone."""
    wanted = set(resolved.rows.column("_oid").to_pylist())
    pieces = [pa.schema([*schema, ("_oid", pa.int64())]).empty_table()]
    for path in resolved.segments:
        kept = _segment(path)
        if kept is None:
            return None
        table, spans = kept
        for oid in sorted(wanted & spans.keys()):
            start, length = spans[oid]
            pieces.append(table.slice(start, length).select(pieces[0].column_names))
    return pa.concat_tables(pieces)


def _segment(path: str) -> tuple[pa.Table, dict[int, tuple[int, int]]] | None:
    """A segment's rows and where each object's rows start and how many there are."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _segment_lock:
        found = _segment_cache.get(key)
        if found is not None:
            _segment_cache.move_to_end(key)
            return found
    try:
        file = pq.ParquetFile(path)
        if file.metadata.num_rows > SEGMENT_CACHE_ROWS:
            return None
        table = file.read().combine_chunks()
    except (OSError, pa.ArrowException):
        return None
    spans: dict[int, tuple[int, int]] = {}
    if table.num_rows:
        encoded = pa.compute.run_end_encode(table.column("_oid")).chunk(0)
        ends = encoded.run_ends.to_pylist()
        starts = [0, *ends[:-1]]
        for oid, start, end in zip(encoded.values.to_pylist(), starts, ends, strict=True):
            spans[oid] = (start, end - start)
    with _segment_lock:
        _segment_cache[key] = (table, spans)
        while sum(t.num_rows for t, _ in _segment_cache.values()) > 2 * SEGMENT_CACHE_ROWS:
            _segment_cache.popitem(last=False)
    return table, spans


def _object_rows_in(path: str, oid: int) -> list[dict[str, Any]]:
    """The rows of object ``oid`` in a segment too big to cache. Only the row groups whose
    ``_oid`` statistics can hold it are read (a segment is sorted by ``_oid``)."""
    with pq.ParquetFile(path) as file:
        meta = file.metadata
        groups = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            stats = next(
                group.column(c).statistics
                for c in range(group.num_columns)
                if group.column(c).path_in_schema == "_oid"
            )
            if stats is None or not stats.has_min_max or stats.min <= oid <= stats.max:
                groups.append(i)
        table = file.read_row_groups(groups, use_threads=False)
    return table.filter(pa.compute.equal(table["_oid"], oid)).to_pylist()  # type: ignore[no-any-return]


def _resolved(index: Index, runs: _Runs, name: str, *, remember: bool = True) -> Resolved:
    """The view's rows resolved to index objects: reused for the scope's key where cached
    (sources whose runs may still be writing are resolved afresh), else resolved and kept."""
    key = runs.where.key
    cached = index.resolved(key, name) if key is not None else None
    if cached is None:
        fresh = _resolve(runs.index, name, runs.all())
        if key is not None and remember:
            index.remember_resolved(key, name, fresh)
        return fresh
    volatile = set(cached.volatile)
    if not volatile:
        return cached
    again = _resolve(runs.index, name, runs.of(volatile))
    keep = pa.compute.invert(cached.rows["volatile"])
    problems = cached.problems.filter(
        pa.compute.invert(pa.compute.is_in(cached.problems["ref"], pa.array(sorted(volatile))))
    )
    return Resolved(
        pa.concat_tables([cached.rows.filter(keep), again.rows]),
        tuple(sorted({*cached.segments, *again.segments})),
        pa.concat_tables([problems, again.problems]),
        cached.volatile,
    )


def _resolve(index: Index, name: str, runs: Sequence[RunFiles]) -> Resolved:
    """Load the objects of ``runs`` that feed view ``name`` into the index (verified, once)
    and say where each one's rows are."""
    schema = stored_schema(name)
    if name == "runs":
        entries = [(run, f) for run in runs if (f := run.file(layout.RUN_FILE)) is not None]
    else:
        relative = FILE_VIEWS[name][0]
        prefix = relative + "/"
        entries = [
            (run, f)
            for run in runs
            for f in run.files
            if (
                run.relative(f).startswith(prefix)
                if name == "metrics"
                else run.relative(f) == relative
            )
        ]
    known = index.loaded(name, (f.checksum for _, f in entries))
    missing = [(f, run.source.read_ref) for run, f in entries if f.checksum not in known]
    if missing:
        index.load(name, schema, missing, _REQUIRED.get(name, ("run_id",)))
        known = index.loaded(name, (f.checksum for _, f in entries))
    columns: dict[str, list[Any]] = {f.name: [] for f in RESOLVED_SCHEMA}
    problems: dict[str, list[Any]] = {f.name: [] for f in PROBLEMS_SCHEMA}
    segments: set[str] = set()
    for run, file in entries:
        state = known.get(file.checksum)
        if state is None:
            continue
        source = run.source
        if state.oid is None or state.segment is None:
            for field, value in (
                ("run_id", run.run_id),
                ("path", file.path),
                ("problem", state.problem),
                *source_row(source).items(),
            ):
                problems[field].append(value)
            continue
        segments.add(state.segment)
        for field, value in (
            ("_oid", state.oid),
            *source_row(source).items(),
            ("run_id", run.run_id),
            ("read_ref", source.read_ref),
            ("status", state.status),
            ("volatile", run.volatile),
        ):
            columns[field].append(value)
    return Resolved(
        pa.Table.from_pydict(columns, schema=RESOLVED_SCHEMA),
        tuple(sorted(segments)),
        pa.Table.from_pydict(problems, schema=PROBLEMS_SCHEMA),
        tuple(sorted({run.source.ref for run in runs if run.volatile})),
    )


def verified_file_view(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    name: str,
    schema: pa.Schema,
    entries: Sequence[tuple[Source, str]],
    required: Sequence[str] = ("run_id",),
) -> list[str]:
    """``CREATE VIEW name`` over Parquet objects (each a source and an object path) the way the
    run views are built, for plugged views (see :data:`PLUGGED_VIEWS`): every object is read
    once through the verified path into the local index, Hive partitioning is off, and the view
    has ``schema``'s columns plus ``ref``, ``namespace``, ``branch`` and ``commit``.

    Returns:
        The local files the view reads (for the connection's ``allowed_paths``).

    Warns:
        SkippedRunFileWarning: objects that do not decode against ``schema`` were skipped.

    Raises:
        CorruptObjectError: an object's bytes do not match its hash.
    """
    files: list[tuple[Source, FileRef]] = []
    for source, path in entries:
        info = lake.stat(path, source.read_ref)
        files.append((source, FileRef(info.path, info.checksum, info.size)))
    with Index(lake) as index:
        known = index.loaded(name, (f.checksum for _, f in files))
        missing = [(f, s.read_ref) for s, f in files if f.checksum not in known]
        if missing:
            index.load(name, schema, missing, required)
            known = index.loaded(name, (f.checksum for _, f in files))
    rows: dict[str, list[Any]] = {f.name: [] for f in RESOLVED_SCHEMA}
    skipped = []
    for source, file in files:
        state = known.get(file.checksum)
        if state is None or state.oid is None or state.segment is None:
            skipped.append(f"{file.path} at {source.ref}: {state.problem if state else '?'}")
            continue
        for field, value in (
            ("_oid", state.oid),
            *source_row(source).items(),
            ("run_id", None),
            ("read_ref", source.read_ref),
            ("status", None),
            ("volatile", False),
        ):
            rows[field].append(value)
    segments = sorted({s.segment for s in known.values() if s.segment is not None})
    table = pa.Table.from_pydict(rows, schema=RESOLVED_SCHEMA)
    _create_joined(
        con, name, schema, Resolved(table, tuple(segments), PROBLEMS_SCHEMA.empty_table())
    )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable file(s) of {name}: {'; '.join(skipped[:3])}",
            SkippedRunFileWarning,
            stacklevel=3,
        )
    return segments


def run_record(lake: Lake, index: Index, run_id: str) -> dict[str, Any] | None:
    """One row of the ``runs`` view for ``run_id`` (read from its own branch), without a DuckDB
    connection: the run record is read from its index segment by its object id.

    Returns None when the run branch holds no readable run record.

    Raises:
        RunNotFoundError: no such run.
    """
    where = run_scope(lake, index, run_id)
    resolved = _resolved(index, _Runs(lake, index, where), "runs")
    if not resolved.rows.num_rows:
        return None
    found = resolved.rows.slice(0, 1).to_pylist()[0]
    oid = found["_oid"]
    one = Resolved(resolved.rows.slice(0, 1), resolved.segments, resolved.problems)
    kept = object_rows(one, layout.RUN_SCHEMA)
    if kept is not None:
        rows = kept.slice(0, 1).to_pylist()
    else:
        for segment in resolved.segments:
            rows = _object_rows_in(segment, oid)
            if rows:
                break
    if not rows:
        return None
    row = {k: v for k, v in rows[0].items() if k != "_oid"}
    row.update(recorded_status=row["status"], heartbeat_time=None)
    row.update({k: found[k] for k in ("ref", "namespace", "branch", "commit")})
    if row["output_commit"] is None and row["status"] in FINAL_STATUSES and not found["volatile"]:
        row["output_commit"] = found["commit"]  # read at its own branch's head: see output_commit
    if row["status"] == "running":
        beat = catalog.heartbeat_time(lake, found["read_ref"], run_id)
        row["heartbeat_time"] = beat
        row["status"] = liveness.effective_status(
            "running", row["host"], row["pid"], beat, row["heartbeat_interval"], datetime.now(UTC)
        )
    return row


def _create_joined(
    con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema, resolved: Resolved
) -> None:
    """``CREATE VIEW name``: the rows of the resolved objects, each with its source columns."""
    # A table, not the Arrow table itself: DuckDB then knows the range of ``_oid`` and joins
    # millions of rows through a perfect hash (2x less join time at 10,000 runs).
    con.register(f"_arrow_sources_{name}", resolved.rows)
    con.execute(
        f"CREATE TABLE _sources_{name} AS SELECT * FROM _arrow_sources_{name} ORDER BY _oid"
    ).fetchall()
    con.unregister(f"_arrow_sources_{name}")
    folder = name in FOLDER_RUN_ID_VIEWS
    columns = ", ".join(_data_columns(schema, folder))
    if resolved.segments:
        data = f"read_parquet({sql_list(resolved.segments)}, hive_partitioning = false)"
    else:
        stored = FOLDER_RUN_ID_VIEWS[name] if folder else schema
        con.register(f"_empty_{name}", pa.schema([*stored, ("_oid", pa.int64())]).empty_table())
        data = f"_empty_{name}"
    con.execute(
        f"CREATE VIEW {name} AS SELECT {columns}, s.ref, s.namespace, s.branch, s.commit"
        f"{', s._oid, s.read_ref, s.volatile' if name.startswith('_') else ''} "
        f"FROM {data} d JOIN _sources_{name} s ON d._oid = s._oid"
    )


def _runs_view(
    con: duckdb.DuckDBPyConnection, lake: Lake, resolved: Resolved, own_heads: bool
) -> None:
    """``runs``: every run record, with the status a reader should believe (``running`` runs
    whose process or heartbeat is gone show ``killed`` or ``stale``) and its output commit
    (see :func:`_output_commit_sql`; ``own_heads``: the live view)."""
    _create_joined(con, "_run_records", layout.RUN_SCHEMA, resolved)
    running = resolved.rows.filter(pa.compute.equal(resolved.rows["status"], "running"))
    live: list[dict[str, Any]] = []
    if running.num_rows:
        now = datetime.now(UTC)
        where = {(r["_oid"], r["ref"]): r["read_ref"] for r in running.to_pylist()}
        records = con.sql(
            "SELECT DISTINCT _oid, ref, run_id, host, pid, heartbeat_interval FROM _run_records "
            f"WHERE _oid IN ({', '.join(str(oid) for oid, _ in where)})"
        ).fetchall()
        for oid, ref, run_id, host, pid, interval in records:
            if (oid, ref) not in where:
                continue
            beat = catalog.heartbeat_time(lake, where[(oid, ref)], run_id)
            status = liveness.effective_status("running", host, pid, beat, interval, now)
            live.append({"_oid": oid, "ref": ref, "status": status, "heartbeat_time": beat})
    _register_output_commit(con, lake)
    joins = ""
    if live:
        con.register("_live_runs", pa.Table.from_pylist(live, schema=_LIVE_SCHEMA))
        joins = " LEFT JOIN _live_runs l ON l._oid = r._oid AND l.ref = r.ref"
    columns = []
    for field in RUNS_SCHEMA:
        if field.name == "status":
            columns.append("coalesce(l.status, r.status) AS status" if live else "r.status")
        elif field.name == "recorded_status":
            columns.append("r.status AS recorded_status")
        elif field.name == "heartbeat_time":
            columns.append("l.heartbeat_time" if live else "NULL::TIMESTAMPTZ AS heartbeat_time")
        elif field.name == "output_commit":
            columns.append(_output_commit_sql(own_heads))
        else:
            columns.append(f'r."{field.name}"')
    con.execute(f"CREATE VIEW runs AS SELECT {', '.join(columns)} FROM _run_records r{joins}")


#: Statuses a run ends with; a record with one of them is the run's final state.
FINAL_STATUSES = frozenset(layout.RUN_STATUSES) - {"running"}
_OUTPUT_COMMIT_UDF = "_flowlake_output_commit"


def _output_commit_sql(own_heads: bool) -> str:
    """The ``runs`` view's ``output_commit``, where a record leaves it empty.

    A run's end makes one commit on its run branch, and the record in it cannot name that
    commit (see :func:`output_commit`). In the live view (``own_heads``), a final record read
    at its own run branch was read at that branch's committed head (a run branch whose record
    may be uncommitted is read afresh and marked volatile), and nothing commits on a run branch
    after its run ends, so the head is its output commit, known without I/O. A final record
    read elsewhere (merged into ``main``, or at a ref) is looked up by :func:`output_commit`.
    Records that name it (lakes written before, which made a second ``recorded`` commit) keep
    their value. SQL evaluates this only for the rows whose ``output_commit`` a query reads.
    """
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))
    prefix = layout.RUN_BRANCH_PREFIX
    own = (
        f"(r.branch = '{prefix}' || r.run_id OR suffix(r.branch, '/{prefix}' || r.run_id))"
        if own_heads
        else "false"
    )
    return (
        f"CASE WHEN r.output_commit IS NOT NULL OR r.status NOT IN ({final}) OR r.volatile "
        f"THEN r.output_commit WHEN {own} THEN r.commit "
        f"ELSE {_OUTPUT_COMMIT_UDF}(r.run_id, r.run_branch, r.read_ref) END AS output_commit"
    )


def _register_output_commit(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """Make :func:`output_commit` callable from SQL on ``con``, each answer computed once."""
    found: dict[tuple[str, str | None, str], str | None] = {}
    # Weak: a database kept for reuse (tracking.connections) must not keep the lake alive.
    lake_ref = weakref.ref(lake)

    def derive(run_id: str, run_branch: str | None, read_at: str) -> str | None:
        key = (run_id, run_branch, read_at)
        if key not in found:
            reader = lake_ref()
            if reader is None:
                return None
            found[key] = output_commit(reader, run_id, run_branch, read_at)
        return found[key]

    con.create_function(
        _OUTPUT_COMMIT_UDF,
        derive,  # type: ignore[arg-type]
        ["VARCHAR"] * 3,
        "VARCHAR",
        null_handling=FunctionNullHandling.SPECIAL,
        side_effects=False,
    )


def output_commit(lake: Lake, run_id: str, run_branch: str | None, read_at: str) -> str | None:
    """The commit that ended the run whose final record is read at commit ``read_at``.

    A run's end commits its final record on its run branch (event ``finished``, ``failed`` or
    ``killed``, with the run id in the commit's metadata) and, when finished, merges that
    commit elsewhere: the output commit is the commit of that event whose record is the very
    object read at ``read_at``. It is looked for among the run's own commits on its run branch
    first, newest first (the head, in all but resumed runs), then (the run branch was deleted)
    among the commits reachable from ``read_at``.

    Returns:
        The commit id, or None when no commit of the run holds this record.
    """
    path = layout.run_file(run_id, layout.RUN_FILE)
    try:
        checksum = lake.stat(path, read_at).checksum
    except StoreError:
        return None

    def holds(commit: Commit) -> bool:
        meta = commit.metadata
        if (
            meta.get("tracking.run_id") != run_id
            or meta.get("tracking.event") not in FINAL_STATUSES
        ):
            return False
        try:
            return lake.stat(path, commit.id).checksum == checksum
        except StoreError:
            return False

    if run_branch is not None:
        try:
            commit: Commit | None = lake.commit(run_branch)
            # Only the run's own commits (resumes and ends) sit above where its branch started.
            while commit is not None and commit.metadata.get("tracking.run_id") == run_id:
                if holds(commit):
                    return commit.id
                commit = lake.commit(commit.parents[0]) if commit.parents else None
        except (StoreError, ValueError):
            pass
    try:
        return next((c.id for c in lake.log(read_at) if holds(c)), None)
    except StoreError:
        return None


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
                **source_row(source),
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
                **source_row(source),
                "protected": source.protected,
                "run_id": run_id
                if short.startswith(layout.RUN_BRANCH_PREFIX) and layout.is_run_id(run_id)
                else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=BRANCHES_SCHEMA)


def register_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """``CREATE VIEW name`` over an in-memory Arrow table."""
    con.register(f"_memory_{name}", table)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _memory_{name}")


def source_row(source: Source) -> dict[str, Any]:
    """The ``ref``, ``namespace``, ``branch`` and ``commit`` columns every view has."""
    return {
        "ref": source.ref,
        "namespace": source.namespace,
        "branch": source.branch,
        "commit": source.commit,
    }


def sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
