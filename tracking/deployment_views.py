"""The ``deployments`` and ``deployment_metrics`` SQL views, built into a DuckDB connection.

Both have the columns ``ref``, ``namespace``, ``branch`` and ``commit`` saying where their rows
were read, like every tracking view. In the live view (no refs) each deployment is read from its
own ``deploy-<name>`` branch; with refs, whatever deployment files those refs hold. Metric parts
are read once through the store's verified path into the local index (as run metrics are);
``production`` is always listed, following ``main``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from store.errors import BranchNotFoundError, PermissionDeniedError
from tracking import deployment_layout as layout
from tracking.views import register_table, source_row, verified_file_view

if TYPE_CHECKING:
    from store import Lake
    from tracking.catalog import Source

SOURCE_FIELDS = [
    ("ref", pa.string()),
    ("namespace", pa.string()),
    ("branch", pa.string()),
    ("commit", pa.string()),
]
#: The record's ``branch`` and ``commit`` are renamed ``deployed_branch`` and
#: ``deployed_commit``: ``branch`` and ``commit`` say where the row was read, as in every view.
_RENAMED = {"branch": "deployed_branch", "commit": "deployed_commit"}
DEPLOYMENTS_SCHEMA = pa.schema(
    [pa.field(_RENAMED.get(f.name, f.name), f.type) for f in layout.RECORD_SCHEMA]
    + [pa.field(n, t) for n, t in SOURCE_FIELDS]
)
VIEW_NAMES = ("deployments", "deployment_metrics")


@dataclass(frozen=True)
class DeploymentFiles:
    """One deployment's files at one source."""

    name: str
    source: Source
    record: str | None
    parts: tuple[str, ...]


def find(lake: Lake, sources: Sequence[Source], live: bool) -> list[DeploymentFiles]:
    """The deployments each source holds (live: only deployment branches, each its own)."""
    out = []
    for source in sources:
        own = (
            layout.name_of_branch(source.branch or "") if source.namespace == "production" else None
        )
        if live and own is None:
            continue
        prefix = layout.folder(own) if live and own else layout.ROOT
        try:
            listing = lake.list(source.read_ref, prefix=prefix)
        except (PermissionDeniedError, BranchNotFoundError):
            continue
        found: dict[str, tuple[list[str], list[str]]] = {}
        for info in listing:
            name, _, rest = info.path[len(layout.ROOT) :].partition("/")
            records, parts = found.setdefault(name, ([], []))
            if rest == layout.RECORD_FILE:
                records.append(info.path)
            elif rest.startswith(layout.METRICS_DIR + "/") and rest.endswith(".parquet"):
                parts.append(info.path)
        for name, (records, parts) in sorted(found.items()):
            out.append(DeploymentFiles(name, source, records[0] if records else None, tuple(parts)))
    return out


def build(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    sources: Sequence[Source],
    live: bool,
    names: set[str],
) -> list[str]:
    """Create the views in ``names`` (of :data:`VIEW_NAMES`) on ``con``; returns the local files
    they read in place (for the caller's ``allowed_paths``)."""
    wanted = names & set(VIEW_NAMES)
    if not wanted:
        return []
    found = find(lake, sources, live)
    files: list[str] = []
    if "deployments" in wanted:
        register_table(con, "deployments", _records(lake, found, live))
    if "deployment_metrics" in wanted:
        entries = [(d.source, p) for d in found for p in d.parts]
        files += metrics_view(con, lake, entries)
    return files


def metrics_view(
    con: duckdb.DuckDBPyConnection, lake: Lake, entries: Sequence[tuple[Source, str]]
) -> list[str]:
    """Create ``deployment_metrics`` over the given parts; returns the local files read.

    The parts are read the way run metrics are (:func:`tracking.views.verified_file_view`):
    each object once through the verified path into the local index, Hive detection off, so a
    damaged object raises ``CorruptObjectError`` instead of serving wrong numbers.
    """
    return verified_file_view(
        con, lake, "deployment_metrics", layout.METRICS_SCHEMA, entries, required=("deployment",)
    )


def _records(lake: Lake, found: list[DeploymentFiles], live: bool) -> pa.Table:
    from tracking.deployment_registry import deployment, serving_since

    rows = []
    has_production = False
    for item in found:
        if item.record is None:
            continue
        for row in lake.read_table(item.record, item.source.read_ref).to_pylist():
            if live and row["deployment"] == layout.PRODUCTION:
                has_production = True
                row["commit"] = lake.resolve("main")
                row["deployed_at"] = serving_since(lake)  # the latest promotion, as deployment()
            rows.append({**_renamed(row), **source_row(item.source)})
    if live and not has_production:
        record = _renamed(deployment(lake, layout.PRODUCTION).record.to_row())
        rows.insert(0, {**record, "ref": None, "namespace": None, "branch": None, "commit": None})
    return pa.Table.from_pylist(rows, schema=DEPLOYMENTS_SCHEMA)


def _renamed(row: dict[str, Any]) -> dict[str, Any]:
    return {_RENAMED.get(k, k): v for k, v in row.items()}
