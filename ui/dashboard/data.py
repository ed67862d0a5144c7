"""Everything the dashboard reads, through the public tracking and store API only.

Each loader is cached with ``st.cache_data`` keyed on the commit ids it depends on (a branch
head, the deployment branches' heads), so a page redraw costs nothing until the lake changes,
and a change shows at once. Charts get per-day aggregates from ``tracking.compare``, never raw
points. Pages never build SQL: the few queries live here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

import store
import tracking
from store.errors import LakeNotFoundError, StoreError

LAKE_ENV = "FLOWLAKE_LAKE"


@dataclass(frozen=True)
class LakeRef:
    """Where the dashboard's lake is, and whether it opens."""

    location: str | None
    problem: str | None = None


def lake_ref() -> LakeRef:
    """The lake named by ``FLOWLAKE_LAKE`` (never created here)."""
    location = os.environ.get(LAKE_ENV)
    if not location:
        return LakeRef(None, f"set {LAKE_ENV} to a lake, or start with `flowlake ui --lake PATH`")
    try:
        open_lake(location).close()
    except LakeNotFoundError:
        return LakeRef(location, f"no lake at {location}; create one with `flowlake init`")
    except StoreError as exc:
        return LakeRef(location, str(exc))
    return LakeRef(location)


def open_lake(location: str) -> store.Lake:
    return store.open(location, create=False)


def version(location: str) -> tuple[tuple[str, str], ...]:
    """Every branch head: the cache key of anything that reads the lake."""
    with open_lake(location) as lake:
        return tuple((b.name, b.head) for b in lake.branches(all_namespaces=True))


# -- deployments ---------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def deployments(location: str, heads: tuple[tuple[str, str], ...]) -> list[Any]:
    with open_lake(location) as lake:
        return tracking.deployments(lake)


@st.cache_data(show_spinner=False)
def comparison(
    location: str, candidate: str, baseline: str, mode: str, heads: tuple[tuple[str, str], ...]
) -> tracking.Comparison:
    """``tracking.compare`` (the numbers every page shows), cached on the branch heads."""
    with open_lake(location) as lake:
        return tracking.compare(lake, candidate, baseline, mode=mode)


def gate(comparison: tracking.Comparison) -> tracking.Gate:
    from tracking.deployment_compare import gate as gate_of

    return gate_of(comparison)


def promote(location: str, candidate: str, baseline: str, mode: str) -> tracking.Promotion:
    """Promote (not cached: it writes). Raises as ``tracking.promote``."""
    with open_lake(location) as lake:
        return tracking.promote(lake, candidate, baseline=baseline, mode=mode)


def metric_table(rows: tuple[tracking.MetricComparison, ...]) -> pd.DataFrame:
    """A comparison's rows as the table the Compare page shows (numbers as compare gives them)."""
    return pd.DataFrame(
        [
            {
                "metric": r.metric,
                "segment": r.segment or "all",
                "verdict": r.verdict,
                "baseline": r.baseline,
                "candidate": r.candidate,
                "difference": r.difference,
                "relative %": r.relative * 100,
                "low": r.low,
                "high": r.high,
                "adjusted p": r.adjusted_p,
                "n baseline": r.n_baseline,
                "n candidate": r.n_candidate,
                "statistic": r.statistic,
                "mode": r.mode,
            }
            for r in rows
        ]
    )


def timeline_frame(comparison: tracking.Comparison) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "metric": p.metric,
                "day": pd.Timestamp(p.day),
                "baseline": p.baseline,
                "candidate": p.candidate,
                "difference": p.difference,
                "low": p.low,
                "high": p.high,
            }
            for p in comparison.timeline
        ]
    )


# -- branches ------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def branches(location: str, heads: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """Every branch: head, author, age, commits ahead of and behind ``main``."""
    now = datetime.now(UTC)
    rows = []
    with open_lake(location) as lake:
        main = dict(heads).get("main")
        main_history = {c.id for c in lake.log(main)} if main else set()
        for name, head in heads:
            commit = lake.commit(head)
            history = {c.id for c in lake.log(head)}
            rows.append(
                {
                    "branch": name,
                    "head": head[:12],
                    "author": commit.committer,
                    "message": commit.message,
                    "age": _age(now - commit.timestamp),
                    "ahead": len(history - main_history),
                    "behind": len(main_history - history),
                }
            )
    return pd.DataFrame(rows)


def _age(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- runs ----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def runs(location: str, heads: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    with open_lake(location) as lake:
        return tracking.search_runs(lake).to_pandas()


@st.cache_data(show_spinner=False)
def sql(location: str, query: str, heads: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """A read-only query through ``tracking.sql``. Raises QueryError."""
    with open_lake(location) as lake:
        return tracking.sql(lake, query).to_pandas()


@dataclass(frozen=True)
class RunDetails:
    record: tracking.RunRecord
    params: pd.DataFrame
    metrics: dict[str, pd.DataFrame]
    artifacts: pd.DataFrame
    lineage: tracking.Lineage


@st.cache_data(show_spinner=False)
def run_details(location: str, run_id: str, heads: tuple[tuple[str, str], ...]) -> RunDetails:
    with open_lake(location) as lake:
        record = tracking.get_run(lake, run_id)
        params = tracking.sql(
            lake, "SELECT key, value FROM params WHERE run_id = ? ORDER BY key", params=[run_id]
        ).to_pandas()
        keys = tracking.sql(
            lake, "SELECT DISTINCT key FROM metrics WHERE run_id = ? ORDER BY key", params=[run_id]
        ).column("key")
        metrics = {
            key: tracking.get_metric_history(lake, run_id, key).to_pandas()
            for key in keys.to_pylist()
        }
        lineage = tracking.lineage(lake, run_id)
    artifacts = pd.DataFrame([a.__dict__ for a in lineage.artifacts])
    return RunDetails(record, params, metrics, artifacts, lineage)


# -- diff ----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def changes(location: str, left: str, right: str) -> pd.DataFrame:
    """Files added, removed and changed from ``left`` to ``right`` (commit ids: cacheable)."""
    with open_lake(location) as lake:
        rows = [{"path": c.path, "change": str(c.kind)} for c in lake.diff(left, right)]
    return pd.DataFrame(rows, columns=["path", "change"])


def resolve(location: str, ref: str) -> str:
    """A ref's commit id. Raises RefNotFoundError."""
    with open_lake(location) as lake:
        return lake.resolve(ref)


@st.cache_data(show_spinner=False)
def table_columns(location: str, path: str, commit: str) -> list[str]:
    with open_lake(location) as lake:
        return list(lake.read_table(path, commit).column_names)


@dataclass(frozen=True)
class RowDiff:
    """A row-level diff of one Parquet table matched on a key: counts and samples."""

    added: int
    removed: int
    changed: int
    added_rows: pd.DataFrame
    removed_rows: pd.DataFrame
    changed_rows: pd.DataFrame


@st.cache_data(show_spinner=False)
def row_diff(
    location: str, path: str, left: str, right: str, key: str, sample: int = 20
) -> RowDiff:
    """Rows added, removed and changed between two commits of a table, computed by DuckDB."""
    with open_lake(location) as lake:
        before = lake.read_table(path, left) if lake.exists(path, left) else None
        after = lake.read_table(path, right) if lake.exists(path, right) else None
    schema = (after or before).schema  # type: ignore[union-attr]
    con = duckdb.connect(":memory:")
    try:
        con.register("l", before if before is not None else schema.empty_table())
        con.register("r", after if after is not None else schema.empty_table())
        k = '"' + key.replace('"', '""') + '"'
        shared = [c for c in schema.names if before is None or c in before.column_names]
        differs = (
            " OR ".join(f'l."{c}" IS DISTINCT FROM r."{c}"' for c in shared if c != key) or "false"
        )

        def frame(query: str) -> pd.DataFrame:
            return con.execute(query).df()

        added = f"SELECT r.* FROM r ANTI JOIN l ON l.{k} = r.{k}"
        removed = f"SELECT l.* FROM l ANTI JOIN r ON l.{k} = r.{k}"
        changed = f"SELECT r.* FROM r JOIN l ON l.{k} = r.{k} WHERE {differs}"

        def count(query: str) -> int:
            row = con.execute(f"SELECT count(*) FROM ({query})").fetchone()
            return int(row[0]) if row else 0

        return RowDiff(
            count(added),
            count(removed),
            count(changed),
            frame(f"{added} LIMIT {sample}"),
            frame(f"{removed} LIMIT {sample}"),
            frame(f"{changed} LIMIT {sample}"),
        )
    finally:
        con.close()
