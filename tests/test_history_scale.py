"""Run history at scale: the local index is a cache, never the truth.

Every query must return the same rows with a warm index, a cold one, one deleted between
queries, one whose segments were compacted, and one whose compaction was cut short.
"""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest

import store
import tracking
from tracking import index as index_module
from tracking import layout
from tracking.index import FileRef, Index

QUERIES = {
    "runs": "SELECT run_id, name, status, recorded_status, branch FROM runs ORDER BY run_id",
    "metrics": "SELECT run_id, key, step, value, branch FROM metrics ORDER BY run_id, key, step",
    "params": "SELECT run_id, key, value FROM params ORDER BY run_id, key",
    "board": "SELECT r.name, max(m.value) AS best FROM runs r JOIN metrics m USING (run_id) "
    "WHERE m.key = 'acc' GROUP BY 1 ORDER BY 2 DESC, 1",
}


def _runs(lake: store.Lake, branch: str, count: int, offset: int = 0) -> list[str]:
    ids = []
    for i in range(offset, offset + count):
        with tracking.start_run(lake, branch=branch, name=f"t{i}", snapshot_code=False) as run:
            run.log_param("i", i)
            for step in range(5):
                run.log_metric("acc", i + step / 10, step=step)
        ids.append(run.id)
    return ids


def _all(lake: store.Lake, **kw: object) -> dict[str, list[dict[str, object]]]:
    return {name: tracking.sql(lake, q, **kw).to_pylist() for name, q in QUERIES.items()}  # type: ignore[arg-type]


def _cache(lake: store.Lake) -> str:
    with Index(lake) as index:
        return index.folder


def test_views_are_the_same_with_a_warm_a_cold_and_a_deleted_index(lake: store.Lake) -> None:
    sweep = lake.branch("sweep")
    _runs(lake, sweep.name, 3)
    cold = _all(lake)
    assert len(cold["runs"]) == 3 and len(cold["metrics"]) == 15
    assert _all(lake) == cold  # warm: answered from resolved views
    shutil.rmtree(_cache(lake))
    assert _all(lake) == cold  # rebuilt from the lake
    tracking.sql(lake, QUERIES["runs"])
    shutil.rmtree(_cache(lake))  # deleted between building the views of one call and the next
    assert tracking.sql(lake, QUERIES["metrics"]).to_pylist() == cold["metrics"]
    assert _all(lake, ref=sweep.name) == _all(lake, refs=[sweep.name])


def test_history_at_an_older_ref_is_unchanged_by_later_runs_and_compaction(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = embedded_lake
    monkeypatch.setattr(index_module, "MAX_SEGMENTS", 2)
    sweep = lake.branch("sweep")
    _runs(lake, sweep.name, 2)
    lake.tag("before", sweep.name)
    before = _all(lake, ref="before")
    for round_ in range(4):  # each round loads new objects, so segments pile up and compact
        _runs(lake, sweep.name, 1, offset=10 + round_)
        _all(lake)
    with Index(lake) as index:
        live = index._db.execute(
            "SELECT count(*) FROM segments WHERE retired IS NULL AND view = 'metrics'"
        ).fetchone()[0]
        retired = index._db.execute(
            "SELECT count(*) FROM segments WHERE retired IS NOT NULL"
        ).fetchone()[0]
    assert live <= 2 and retired > 0
    assert _all(lake, ref="before") == before
    assert len(_all(lake)["runs"]) == 6
    shutil.rmtree(_cache(lake))
    assert _all(lake, ref="before") == before


def test_a_compaction_cut_short_loses_nothing(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = embedded_lake
    sweep = lake.branch("sweep")
    monkeypatch.setattr(index_module, "MAX_SEGMENTS", 1)
    _runs(lake, sweep.name, 1)
    _all(lake)
    _runs(lake, sweep.name, 1, offset=1)
    real = index_module._write_segment

    def dies_while_compacting(path: str, table: pa.Table) -> None:
        if "_oid" in table.column_names and len(set(table["_oid"].to_pylist())) > 1:
            real(path + ".partial", table.slice(0, 1))  # half-done work left behind
            raise KeyboardInterrupt("killed during compaction")
        real(path, table)

    monkeypatch.setattr(index_module, "_write_segment", dies_while_compacting)
    with pytest.raises(KeyboardInterrupt):
        _all(lake)
    monkeypatch.setattr(index_module, "_write_segment", real)
    expected = _all(lake)
    assert len(expected["runs"]) == 2 and len(expected["metrics"]) == 10
    shutil.rmtree(_cache(lake))
    assert _all(lake) == expected


def test_a_running_run_shows_new_points_without_a_commit_while_finished_runs_are_reused(
    lake: store.Lake,
) -> None:
    sweep = lake.branch("sweep")
    _runs(lake, sweep.name, 2)
    live = tracking.start_run(lake, branch=sweep.name, name="live", snapshot_code=False)
    try:
        live.log_metric("acc", 0.5, step=0)
        live.flush()
        count = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
        everything = "SELECT run_id, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1"
        assert tracking.sql(lake, count, params=[live.id]).to_pylist() == [{"n": 1}]
        finished = [r for r in tracking.sql(lake, everything).to_pylist() if r["run_id"] != live.id]
        live.log_metric("acc", 0.6, step=1)
        live.flush()
        assert tracking.sql(lake, count, params=[live.id]).to_pylist() == [{"n": 2}]
        counts = {r["run_id"]: r["n"] for r in tracking.sql(lake, everything).to_pylist()}
        assert counts[live.id] == 2 and len(counts) == 3
        assert all(counts[r["run_id"]] == r["n"] for r in finished)
    finally:
        live.end()
    status = tracking.sql(lake, "SELECT status FROM runs WHERE run_id = ?", params=[live.id])
    assert status.to_pylist() == [{"status": "finished"}]


def test_a_commits_listing_derived_from_its_parent_matches_a_full_listing(
    lake: store.Lake,
) -> None:
    sweep = lake.branch("sweep")
    _runs(lake, sweep.name, 1)
    parent = sweep.head().id
    _runs(lake, sweep.name, 1, offset=1)
    head = sweep.head()
    assert parent in head.parents
    with Index(lake) as index:
        index.listing(parent, layout.RUNS_PREFIX)
        derived = index.listing(head.id, layout.RUNS_PREFIX)
    full = [FileRef(o.path, o.checksum, o.size) for o in lake.list(head.id, layout.RUNS_PREFIX)]
    assert derived == full
    assert os.path.isdir(_cache(lake))
