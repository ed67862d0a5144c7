"""SQL over run history: verified reads, the sandbox, bad run files, time limits, CLI output."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
from datetime import datetime

import pytest
from typer.testing import CliRunner

import store
import tracking
from store.errors import CorruptObjectError, InvalidArgumentError
from tracking import layout
from tracking.errors import SkippedRunFileWarning
from tracking.query import pinned_run
from ui.cli_tracking import runs_app

VALUES = [0.123456789 + i * 1.000001 for i in range(50)]


def _run(lake: store.Lake, branch: str, name: str = "r") -> tracking.Run:
    with tracking.start_run(lake, branch=branch, name=name, snapshot_code=False) as run:
        for step, value in enumerate(VALUES):
            run.log_metric("acc", value, step=step)
        run.log_param("lr", "0.1")
    return run


def test_flipped_bit_in_a_metric_part_raises_rather_than_returning_a_wrong_value(
    embedded_lake: store.Lake,
) -> None:
    exp = embedded_lake.branch("exp")
    # Enough points for a part over the embedded store's inline limit (8 KiB): a file of its
    # own, not bytes inside a range object (whose own hash covers them).
    with tracking.start_run(embedded_lake, branch=exp.name, snapshot_code=False) as run:
        for step in range(2000):
            run.log_metric("acc", VALUES[step % len(VALUES)] + step, step=step)
    local = embedded_lake.locate(layout.metrics_part(run.id, 0), exp.name)
    assert local is not None and os.path.isfile(local)
    with open(local, "rb") as f:
        blob = bytearray(f.read())
    at = bytes(blob).find(struct.pack("<d", VALUES[7] + 7))
    assert at >= 0
    blob[at + 7] ^= 0x01
    os.chmod(local, 0o644)
    with open(local, "wb") as f:
        f.write(bytes(blob))
    with pytest.raises(CorruptObjectError):
        tracking.sql(embedded_lake, "SELECT value FROM metrics")
    with pytest.raises(CorruptObjectError):
        tracking.get_metric_history(embedded_lake, run.id, "acc")


def test_queries_cannot_read_the_working_directory_tmp_folder(
    embedded_lake: store.Lake, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(embedded_lake, embedded_lake.branch("exp").name)
    work = os.path.join(str(tmp_path), "work")
    os.makedirs(os.path.join(work, ".tmp"))
    with open(os.path.join(work, ".tmp", "secret.txt"), "w") as f:
        f.write("PRIVATE")
    monkeypatch.chdir(work)
    for query in (
        "SELECT content FROM read_text('.tmp/secret.txt')",
        f"SELECT file FROM glob('{work}/.tmp/*')",
        "SELECT m.value, t.content FROM metrics m, read_text('.tmp/secret.txt') t",
    ):
        with pytest.raises(tracking.QueryError):
            tracking.sql(embedded_lake, query)


@pytest.mark.parametrize("folder", ["step=7", "key=zzz", "value=9", "project=churn"])
def test_a_lake_under_a_hive_style_folder_keeps_its_columns(
    tmp_path: os.PathLike[str], folder: str
) -> None:
    lake = store.open(os.path.join(str(tmp_path), folder, "lake"))
    try:
        run = _run(lake, lake.branch("exp").name)
        rows = tracking.sql(lake, "SELECT * FROM metrics WHERE step = 7").to_pylist()
        assert len(rows) == 1
        assert (rows[0]["key"], rows[0]["value"], rows[0]["run_id"]) == ("acc", VALUES[7], run.id)
        assert set(rows[0]) == {
            *layout.METRICS_SCHEMA.names,
            "ref",
            "namespace",
            "branch",
            "commit",
        }
        params = tracking.sql(lake, "SELECT key, value FROM params").to_pylist()
        assert params == [{"key": "lr", "value": "0.1"}]
    finally:
        lake.close()


def test_one_bad_run_file_is_skipped_and_reported_never_failing_the_query(
    lake: store.Lake, request: pytest.FixtureRequest
) -> None:
    good = _run(lake, lake.branch("exp").name, name="good")
    other = lake.with_namespace("user:mallory").branch("junk")
    bad_id = "ab" * 16
    other.write_bytes(layout.run_file(bad_id, layout.RUN_FILE), b"PAR1" + b"x" * 10_000)
    other.write_bytes(layout.run_file(bad_id, layout.PARAMS_FILE), b"not parquet")
    with pytest.warns(SkippedRunFileWarning, match="problems view"):
        names = tracking.sql(lake, "SELECT name FROM runs").column("name").to_pylist()
    assert names == ["good"]
    with pytest.warns(SkippedRunFileWarning):
        assert tracking.search_runs(lake).column("run_id").to_pylist() == [good.id]
    with pytest.warns(SkippedRunFileWarning):
        problems = tracking.sql(lake, "SELECT run_id, path, branch FROM problems").to_pylist()
    assert sorted(p["path"] for p in problems) == [
        layout.run_file(bad_id, layout.PARAMS_FILE),
        layout.run_file(bad_id, layout.RUN_FILE),
    ]
    assert {(p["run_id"], p["branch"]) for p in problems} == {(bad_id, "user:mallory/junk")}
    if request.node.callspec.params["lake"] == "embedded":  # the CLI opens plain lakes itself
        result = CliRunner().invoke(runs_app, ["runs", "--lake", lake.location])
        assert result.exit_code == 0, result.output
        assert "good" in result.output


def test_a_query_past_its_timeout_is_interrupted(embedded_lake: store.Lake) -> None:
    endless = "SELECT count(*) FROM range(1000000000000) a, range(1000) b"
    with pytest.raises(tracking.QueryError, match="timeout"):
        tracking.sql(embedded_lake, endless, timeout=0.2)
    for bad in (0, -1, True, "1"):
        with pytest.raises(InvalidArgumentError):
            tracking.sql(embedded_lake, "SELECT 1", timeout=bad)  # type: ignore[arg-type]
    assert tracking.sql(embedded_lake, "SELECT 1 AS one", timeout=30).to_pylist() == [{"one": 1}]
    result = CliRunner().invoke(
        runs_app, ["sql", endless, "--timeout", "0.2", "--lake", embedded_lake.location]
    )
    assert result.exit_code == 1 and "timeout" in result.output


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/Los_Angeles"])
def test_cli_json_and_csv_print_exact_instants_with_offsets_and_strict_json(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    run = _run(embedded_lake, embedded_lake.branch("exp").name)
    monkeypatch.setenv("TZ", zone)
    query = (
        "SELECT start_time, 'nan'::DOUBLE AS bad, 1/3 AS third, [1, 2] AS xs FROM runs "
        "WHERE run_id = ?"
    ).replace("?", f"'{run.id}'")
    location = embedded_lake.location
    out = CliRunner().invoke(runs_app, ["sql", query, "--json", "--lake", location])
    assert out.exit_code == 0, out.output

    def strict(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    row = json.loads(out.output.splitlines()[0], parse_constant=strict)
    assert datetime.fromisoformat(row["start_time"]) == run.start_time
    assert row["start_time"].endswith("+00:00")
    assert row["bad"] == "NaN" and row["third"] == 1 / 3 and row["xs"] == [1, 2]
    out = CliRunner().invoke(runs_app, ["sql", query, "--csv", "--lake", location])
    assert out.exit_code == 0, out.output
    row = next(csv.DictReader(io.StringIO(out.output)))
    assert datetime.fromisoformat(row["start_time"]) == run.start_time
    assert float(row["third"]) == 1 / 3 and json.loads(row["xs"]) == [1, 2]


@pytest.mark.parametrize(
    ("query", "pinned"),
    [
        ("SELECT status FROM runs WHERE run_id = ?", True),
        ("SELECT r.status FROM runs r WHERE r.run_id = ? AND r.status = 'x'", True),
        ("SELECT * FROM metrics WHERE key = 'acc' AND run_id = ?", True),
        ("SELECT status FROM runs WHERE run_id = ? OR name = 'x'", False),
        ("SELECT status FROM runs WHERE run_id <> ?", False),
        ("SELECT r.status FROM runs r JOIN metrics m USING (run_id) WHERE r.run_id = ?", False),
        ("SELECT (SELECT count(*) FROM params) FROM runs WHERE run_id = ?", False),
        ("SELECT status FROM runs WHERE run_id = ? UNION ALL SELECT status FROM runs", False),
        ("SELECT * FROM commits WHERE run_id = ?", False),
        ("WITH x AS (SELECT * FROM runs) SELECT * FROM x WHERE run_id = ?", False),
    ],
)
def test_only_queries_limited_to_one_run_read_only_that_run(query: str, pinned: bool) -> None:
    import duckdb

    run_id = "0123456789abcdef" * 2
    con = duckdb.connect()
    try:
        assert pinned_run(con, query, [run_id]) == (run_id if pinned else None)
    finally:
        con.close()


def test_a_query_pinned_to_one_run_returns_what_the_full_scan_returns(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp")
    finished = _run(lake, exp.name, "done")
    live = tracking.start_run(lake, branch=exp.name, name="live", snapshot_code=False)
    try:
        live.log_metric("acc", 0.5, step=1)
        live.flush()
        for run_id in (finished.id, live.id, "f" * 32):
            pinned = tracking.sql(lake, "SELECT * FROM runs WHERE run_id = ?", params=[run_id])
            full = tracking.sql(lake, "SELECT * FROM runs")
            expected = [r for r in full.to_pylist() if r["run_id"] == run_id]
            assert _comparable(pinned.to_pylist()) == _comparable(expected)
            metrics = tracking.sql(
                lake,
                "SELECT step, value FROM metrics WHERE run_id = ? ORDER BY step",
                params=[run_id],
            ).to_pylist()
            all_metrics = tracking.sql(
                lake, "SELECT run_id, step, value FROM metrics ORDER BY step"
            ).to_pylist()
            assert metrics == [
                {"step": m["step"], "value": m["value"]}
                for m in all_metrics
                if m["run_id"] == run_id
            ]
    finally:
        live.end()


def _comparable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "heartbeat_time"} for r in rows]


def test_no_warning_without_bad_files(embedded_lake: store.Lake) -> None:
    _run(embedded_lake, embedded_lake.branch("exp").name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracking.sql(embedded_lake, "SELECT count(*) AS n FROM problems").to_pylist() == [
            {"n": 0}
        ]


def test_get_run_equals_the_runs_view_row(lake: store.Lake) -> None:
    exp = lake.branch("exp")
    finished = _run(lake, exp.name, "done")
    live = tracking.start_run(lake, branch=exp.name, name="live", snapshot_code=False)
    try:
        for run_id in (finished.id, live.id):
            row = tracking.sql(lake, "SELECT * FROM runs WHERE run_id = ?", params=[run_id])
            expected = tracking.RunRecord.from_row(row.to_pylist()[0])
            assert tracking.get_run(lake, run_id) == expected
        assert tracking.get_run(lake, live.id).status == "running"
    finally:
        live.end()
    with pytest.raises(tracking.RunNotFoundError):
        tracking.get_run(lake, "e" * 32)


def test_plugged_views_can_read_lake_files_verified_through_the_index(lake: store.Lake) -> None:
    import duckdb
    import pyarrow as pa

    from tracking import catalog, views

    branch = lake.branch("exp")
    schema = pa.schema([("run_id", pa.string()), ("x", pa.int64())])
    branch.write_table("d/a.parquet", pa.table({"run_id": ["r"], "x": [1]}, schema=schema))
    branch.write_table("d/b.parquet", pa.table({"run_id": ["r", "s"], "x": [2, 3]}, schema=schema))
    branch.write_bytes("d/c.parquet", b"PAR1 not really")
    source = catalog.Source(branch.name, lake.namespace, branch.name, "c0", branch.name)
    con = duckdb.connect()
    try:
        paths = ["d/a.parquet", "d/b.parquet", "d/c.parquet"]
        with pytest.warns(SkippedRunFileWarning, match="d/c.parquet"):
            files = views.verified_file_view(
                con, lake, "things", schema, [(source, p) for p in paths]
            )
        rows = con.sql("SELECT x, branch FROM things ORDER BY x").fetchall()
    finally:
        con.close()
    assert rows == [(1, branch.name), (2, branch.name), (3, branch.name)]
    assert files and all(os.path.isfile(f) for f in files)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE leaked AS SELECT 1 AS x",
        "CREATE TEMP TABLE leaked AS SELECT 1 AS x",
        "CREATE MACRO leaked() AS 1",
        "SET enable_external_access = true",
        "SET threads = 1",
        "ATTACH ':memory:' AS leaked",
        "USE leaked",
    ],
)
def test_a_refused_statement_leaves_nothing_for_the_next_query(
    embedded_lake: store.Lake, statement: str
) -> None:
    _run(embedded_lake, embedded_lake.branch("exp").name)
    query = (
        "SELECT (SELECT count(*) FROM runs) AS runs,"
        " (SELECT count(*) FROM duckdb_tables() WHERE table_name = 'leaked') AS tables,"
        " (SELECT count(*) FROM duckdb_functions() WHERE function_name = 'leaked') AS macros,"
        " (SELECT count(*) FROM duckdb_databases() WHERE database_name = 'leaked') AS databases,"
        " current_setting('enable_external_access') AS external,"
        " current_setting('threads') AS threads"
    )
    before = tracking.sql(embedded_lake, query).to_pylist()
    with pytest.raises(tracking.QueryError):
        tracking.sql(embedded_lake, statement)
    after = tracking.sql(embedded_lake, query).to_pylist()
    assert after == before
    assert after[0]["runs"] == 1 and after[0]["tables"] == after[0]["databases"] == 0
    assert after[0]["external"] is False


def test_repeated_queries_reuse_their_views_until_a_branch_moves(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking import views

    builds: list[set[str]] = []
    real_build = views.build

    def counting_build(*args: object, **kwargs: object) -> list[str]:
        builds.append(set(args[4]))  # type: ignore[arg-type]
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views, "build", counting_build)
    copies: list[tuple[str, str, int]] = []
    for function in ("copy_run_rows", "copy_settled_rows"):
        real = getattr(views, function)

        def counting_copy(*args: object, _real: object = real, **kwargs: object) -> int:
            copied: int = _real(*args, **kwargs)  # type: ignore[operator]
            copies.append((str(args[1]), _real.__name__, copied))  # type: ignore[attr-defined]
            return copied

        monkeypatch.setattr(views, function, counting_copy)
    exp = embedded_lake.branch("exp")
    first = _run(embedded_lake, exp.name, "a")
    count = "SELECT count(*) AS n FROM runs"
    lookup = "SELECT name FROM runs WHERE run_id = ?"
    assert tracking.sql(embedded_lake, count).to_pylist() == [{"n": 1}]
    with pytest.raises(tracking.QueryError, match="nope"):  # rejected by DuckDB: views kept
        tracking.sql(embedded_lake, "SELECT nope FROM runs")
    assert tracking.sql(embedded_lake, count).to_pylist() == [{"n": 1}]
    assert tracking.sql(embedded_lake, lookup, params=[first.id]).to_pylist() == [{"name": "a"}]
    assert tracking.sql(embedded_lake, lookup, params=[first.id]).to_pylist() == [{"name": "a"}]
    # The full scan built its views once and copied the settled run's row into the lake's
    # database of run rows; the one-run lookups built and copied nothing.
    bulk = ("runs", "copy_settled_rows", 1)
    assert len(builds) == 1 and copies == [bulk]
    second = _run(embedded_lake, exp.name, "b")
    assert tracking.sql(embedded_lake, count).to_pylist() == [{"n": 2}]
    assert len(builds) == 2
    assert tracking.sql(embedded_lake, lookup, params=[second.id]).to_pylist() == [{"name": "b"}]
    assert tracking.sql(embedded_lake, lookup, params=[first.id]).to_pylist() == [{"name": "a"}]
    # The second full scan copied only the new run: the first one's branch did not move.
    assert len(builds) == 2 and copies == [bulk, bulk]


LOOKUP = "SELECT name, status, output_commit, commit FROM runs WHERE run_id = ?"


def test_a_one_run_lookup_after_its_run_branch_moved_sees_the_new_record(
    lake: store.Lake,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = _run(lake, lake.branch("exp").name, "before")
    for _ in range(2):  # copied on the first lookup, read from the copy on the second
        assert tracking.sql(lake, LOOKUP, params=[run.id]).to_pylist()[0]["name"] == "before"
    assert tracking.get_run(lake, run.id).name == "before"
    own = lake.get_branch(tracking.get_run(lake, run.id).run_branch)
    path = layout.run_file(run.id, layout.RUN_FILE)
    record = pq.read_table(pa.BufferReader(lake.read_bytes(path, own.name)))
    renamed = record.set_column(
        record.schema.get_field_index("name"), "name", pa.array(["after"], pa.string())
    )
    sink = pa.BufferOutputStream()
    pq.write_table(renamed, sink)
    own.write_many([(path, sink.getvalue().to_pybytes())])
    moved = own.commit("rename the run")
    found = tracking.sql(lake, LOOKUP, params=[run.id]).to_pylist()
    full = tracking.sql(lake, "SELECT name, status, output_commit, commit, run_id FROM runs")
    assert found == [
        {k: v for k, v in r.items() if k != "run_id"}
        for r in full.to_pylist()
        if r["run_id"] == run.id
    ]
    assert found[0]["name"] == "after" and found[0]["commit"] == moved.id
    assert tracking.get_run(lake, run.id).name == "after"


def test_one_run_lookups_share_a_database_yet_each_sees_only_its_run(
    embedded_lake: store.Lake,
) -> None:
    exp = embedded_lake.branch("exp").name
    first = _run(embedded_lake, exp, "a")
    count = "SELECT count(*) AS n, min(run_id) AS run_id FROM metrics WHERE run_id = ?"
    assert tracking.sql(embedded_lake, count, params=[first.id]).to_pylist() == [
        {"n": 50, "run_id": first.id}
    ]
    with pytest.raises(tracking.QueryError, match="nope"):  # rejected by DuckDB: rows kept
        tracking.sql(embedded_lake, "SELECT nope FROM metrics WHERE run_id = ?", params=[first.id])
    later = _run(embedded_lake, exp, "b")  # added after the database was kept
    for run in (later, first, later):
        assert tracking.sql(embedded_lake, count, params=[run.id]).to_pylist() == [
            {"n": 50, "run_id": run.id}
        ]
        assert tracking.sql(embedded_lake, LOOKUP, params=[run.id]).to_pylist()[0]["name"] == (
            "a" if run is first else "b"
        )


def test_a_one_run_lookup_over_segments_too_large_to_keep_returns_the_full_scans_rows(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking import views

    monkeypatch.setattr(views, "SEGMENT_CACHE_ROWS", 0)
    monkeypatch.setattr(views, "_segment_cache", type(views._segment_cache)())
    run = _run(embedded_lake, embedded_lake.branch("exp").name)
    for view in ("runs", "metrics", "params", "environment"):  # environment: run_id from path
        pinned = tracking.sql(
            embedded_lake, f"SELECT * FROM {view} WHERE run_id = ?", params=[run.id]
        )
        full = tracking.sql(embedded_lake, f"SELECT * FROM {view}").to_pylist()
        assert _comparable(pinned.to_pylist()) == _comparable(full) and full
    assert tracking.get_run(embedded_lake, run.id).name == "r"


def test_a_run_looked_up_in_a_segment_too_large_to_keep_is_read_from_its_own_row_groups(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking import index, views

    monkeypatch.setattr(views, "SEGMENT_CACHE_ROWS", 0)
    monkeypatch.setattr(views, "_segment_cache", type(views._segment_cache)())
    monkeypatch.setattr(index, "SEGMENT_ROW_GROUP_ROWS", 1)  # one row group per run record
    exp = embedded_lake.branch("exp").name
    runs = [_run(embedded_lake, exp, f"r{k}") for k in range(4)]
    for run in reversed(runs):
        assert tracking.get_run(embedded_lake, run.id).name == run.name


def test_a_one_run_lookup_of_a_run_with_many_metric_parts_returns_every_point(
    embedded_lake: store.Lake,
) -> None:
    with tracking.start_run(
        embedded_lake, branch=embedded_lake.branch("exp").name, snapshot_code=False
    ) as run:
        for step in range(6):
            run.log_metric("acc", step / 10, step=step)
            run.flush()  # one metric part per flush
    query = "SELECT step, value FROM metrics WHERE run_id = ? ORDER BY step"
    expected = [{"step": s, "value": s / 10} for s in range(6)]
    for _ in range(2):
        assert tracking.sql(embedded_lake, query, params=[run.id]).to_pylist() == expected


def test_a_one_run_lookup_of_a_running_run_sees_each_flush(embedded_lake: store.Lake) -> None:
    live = tracking.start_run(
        embedded_lake, branch=embedded_lake.branch("exp").name, snapshot_code=False
    )
    query = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
    try:
        for step in range(3):
            live.log_metric("acc", 0.5, step=step)
            live.flush()
            assert tracking.sql(embedded_lake, query, params=[live.id]).to_pylist() == [
                {"n": step + 1}
            ]
            status = tracking.sql(embedded_lake, LOOKUP, params=[live.id]).to_pylist()
            assert status[0]["status"] == "running"
    finally:
        live.end()
    assert tracking.sql(embedded_lake, LOOKUP, params=[live.id]).to_pylist()[0]["status"] == (
        "finished"
    )


def test_kept_views_are_rebuilt_when_the_index_is_deleted(embedded_lake: store.Lake) -> None:
    import shutil

    from tracking.index import Index

    _run(embedded_lake, embedded_lake.branch("exp").name)
    query = "SELECT r.name, m.step, m.value FROM runs r JOIN metrics m USING (run_id) ORDER BY 2"
    expected = tracking.sql(embedded_lake, query).to_pylist()
    assert tracking.sql(embedded_lake, query).to_pylist() == expected
    with Index(embedded_lake) as index:
        folder = index.folder
    shutil.rmtree(folder)
    assert tracking.sql(embedded_lake, query).to_pylist() == expected
    assert tracking.sql(embedded_lake, query).to_pylist() == expected


def test_concurrent_queries_on_one_lake_each_get_whole_answers(
    embedded_lake: store.Lake,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    run = _run(embedded_lake, embedded_lake.branch("exp").name)
    query = "SELECT count(*) AS n, sum(value) AS total FROM metrics WHERE run_id = ?"
    expected = tracking.sql(embedded_lake, query, params=[run.id]).to_pylist()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: tracking.sql(embedded_lake, query, params=[run.id]).to_pylist(),
                range(12),
            )
        )
    assert answers == [expected] * 12


def test_a_query_after_an_unkept_one_sees_nothing_it_created(embedded_lake: store.Lake) -> None:
    exp = embedded_lake.branch("exp")
    done = _run(embedded_lake, exp.name, "done")
    live = tracking.start_run(embedded_lake, branch=exp.name, name="live", snapshot_code=False)
    try:
        live.log_metric("acc", 0.5, step=1)
        live.flush()
        # A running run's views are never kept.
        query = "SELECT count(*) AS n FROM metrics m JOIN runs r USING (run_id)"
        assert tracking.sql(embedded_lake, query).to_pylist() == [{"n": 51}]
        leftovers = (
            "SELECT (SELECT count(*) FROM duckdb_tables())"
            " + (SELECT count(*) FROM duckdb_views() WHERE NOT internal) AS n,"
            " (SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE '%flowlake%') AS f"
        )
        assert tracking.sql(embedded_lake, leftovers).to_pylist() == [{"n": 0, "f": 0}]
        one = "SELECT count(*) AS n FROM metrics WHERE run_id = ?"
        for _ in range(3):  # built, kept, then copied into a table on second use
            assert tracking.sql(embedded_lake, one, params=[done.id]).to_pylist() == [{"n": 50}]
    finally:
        live.end()


def test_a_first_lookup_of_a_run_reads_the_row_a_full_scan_copied_and_answers_alike(
    lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tracking import views
    from tracking.index import Index

    one_run_copies: list[str] = []
    real_copy = views.copy_run_rows

    def counting_copy(*args: object, **kwargs: object) -> int:
        one_run_copies.append(str(args[1]))
        return real_copy(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views, "copy_run_rows", counting_copy)
    exp = lake.branch("exp").name
    done = []
    for name in ("a", "b", "c"):
        with tracking.start_run(lake, branch=exp, name=name, snapshot_code=False) as run:
            for step in range(2):
                run.log_metric("acc", step / 10, step=step)
                run.flush()  # two metric parts: compaction has work on its run branch
        done.append(run)
    live = tracking.start_run(lake, branch=exp, name="live", snapshot_code=False)

    def lookup(run_id: str) -> list[dict[str, object]]:
        found = tracking.sql(lake, "SELECT * FROM runs WHERE run_id = ?", params=[run_id])
        return _comparable(found.to_pylist())

    def scanned(run_id: str) -> list[dict[str, object]]:
        full = tracking.sql(lake, "SELECT * FROM runs").to_pylist()  # copies settled runs
        return _comparable([r for r in full if r["run_id"] == run_id])

    try:
        live.log_metric("acc", 0.5, step=1)
        live.flush()
        expected = {run.id: scanned(run.id) for run in (*done, live)}
        for run in done:  # first lookups: each reads the row the full scan copied
            assert lookup(run.id) == expected[run.id]
        assert one_run_copies == []
        assert lookup(live.id) == expected[live.id]  # a running run is never copied
        assert expected[live.id][0]["status"] == "running" and one_run_copies == []
    finally:
        live.end()
    assert lookup(live.id)[0]["status"] == "finished"  # its branch moved: copied anew
    assert lookup(live.id) == scanned(live.id)

    # A moved run branch head: the copy made for the old head is never read again.
    own = lake.get_branch(tracking.get_run(lake, done[0].id).run_branch)
    path = layout.run_file(done[0].id, layout.RUN_FILE)
    record = pq.read_table(pa.BufferReader(lake.read_bytes(path, own.name)))
    renamed = record.set_column(
        record.schema.get_field_index("name"), "name", pa.array(["a2"], pa.string())
    )
    sink = pa.BufferOutputStream()
    pq.write_table(renamed, sink)
    own.write_many([(path, sink.getvalue().to_pybytes())])
    own.commit("rename the run")
    assert lookup(done[0].id)[0]["name"] == "a2"
    assert lookup(done[0].id) == scanned(done[0].id)

    # Compacted run branches (new heads), then the index deleted: answers stay the full scan's.
    assert tracking.compact(lake)
    assert lookup(done[1].id) == scanned(done[1].id)
    with Index(lake) as index:
        folder = index.folder
    shutil.rmtree(folder)
    copies_before = len(one_run_copies)
    assert lookup(done[2].id) == scanned(done[2].id)
    assert len(one_run_copies) == copies_before  # copied by the scan after compaction
    shutil.rmtree(folder)
    for run in done:
        assert lookup(run.id) == scanned(run.id)


def test_a_replaced_run_rows_database_gets_every_known_run_again_in_one_batch(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking import connections, views

    copies: list[tuple[str, int]] = []
    for function in ("copy_run_rows", "copy_settled_rows"):
        real = getattr(views, function)

        def counting_copy(*args: object, _real: object = real, **kwargs: object) -> int:
            copied: int = _real(*args, **kwargs)  # type: ignore[operator]
            copies.append((_real.__name__, copied))  # type: ignore[attr-defined]
            return copied

        monkeypatch.setattr(views, function, counting_copy)
    exp = embedded_lake.branch("exp").name
    runs = [_run(embedded_lake, exp, name) for name in ("a", "b")]
    assert tracking.sql(embedded_lake, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 2}]
    assert copies == [("copy_settled_rows", 2)]
    monkeypatch.setattr(connections, "RUN_ROWS_MAX", 0)  # every lookup finds it replaced
    for run, name in zip(runs, ("a", "b"), strict=True):
        found = tracking.sql(embedded_lake, LOOKUP, params=[run.id]).to_pylist()
        assert found[0]["name"] == name
    assert copies == [("copy_settled_rows", 2)] * 3


def test_a_bulk_copy_that_fails_costs_only_time(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    from tracking import views

    def segment_gone(*args: object, **kwargs: object) -> int:
        raise duckdb.IOException("No files found that match the pattern")  # index deleted

    monkeypatch.setattr(views, "copy_settled_rows", segment_gone)
    exp = embedded_lake.branch("exp").name
    runs = [_run(embedded_lake, exp, name) for name in ("a", "b")]
    assert tracking.sql(embedded_lake, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 2}]
    for run, name in zip(runs, ("a", "b"), strict=True):
        found = tracking.sql(embedded_lake, LOOKUP, params=[run.id]).to_pylist()
        assert found[0]["name"] == name


_AFTER_RESUME = """
import sys
import store, tracking
lake = store.open(sys.argv[1])
with tracking.resume_run(lake, sys.argv[2]) as run:
    run.log_metric("acc", 9.5, step=99)
    run.set_tag("phase", "resumed")
lake.close()
"""


def test_a_lookup_after_another_process_resumed_and_ended_the_run_sees_its_new_row(
    lake: store.Lake,
    lake_access: object,
    tmp_path: os.PathLike[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess
    import sys

    exp = lake.branch("exp").name
    runs = [_run(lake, exp, name) for name in ("a", "b")]

    def lookup(run_id: str) -> list[dict[str, object]]:
        found = tracking.sql(lake, "SELECT * FROM runs WHERE run_id = ?", params=[run_id])
        return _comparable(found.to_pylist())

    def scanned(run_id: str) -> list[dict[str, object]]:
        full = tracking.sql(lake, "SELECT * FROM runs").to_pylist()
        return _comparable([r for r in full if r["run_id"] == run_id])

    before = scanned(runs[0].id)  # copies both settled rows
    assert lookup(runs[0].id) == before
    done = subprocess.run(
        [sys.executable, "-c", _AFTER_RESUME, lake.location, runs[0].id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    after = lookup(runs[0].id)
    assert after != before and after == scanned(runs[0].id)
    assert tracking.get_run(lake, runs[0].id).end_time == after[0]["end_time"]
    # The same answer from a process-fresh cache (a new index and run rows database).
    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(os.path.join(tmp_path, "fresh-cache")))
    assert lookup(runs[0].id) == after
    assert lookup(runs[1].id) == scanned(runs[1].id)


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_a_lookup_after_the_run_branch_was_deleted_reads_what_a_full_scan_reads(
    embedded_lake: store.Lake,
    where: str,
    tmp_path: os.PathLike[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row copied for the run branch's head is not read once the branch is gone: the run
    is then read where it was merged (its target branch), as the full scan reads it."""
    import subprocess
    import sys

    lake = embedded_lake
    exp = lake.branch("exp").name
    gone, kept = (_run(lake, exp, name) for name in ("gone", "kept"))
    lookup = "SELECT run_id, name, commit FROM runs WHERE run_id = ?"

    def scanned(run_id: str) -> list[dict[str, object]]:
        full = tracking.sql(lake, "SELECT run_id, name, commit FROM runs").to_pylist()
        return [r for r in full if r["run_id"] == run_id]

    before = scanned(gone.id)  # copies both settled rows
    assert tracking.sql(lake, lookup, params=[gone.id]).to_pylist() == before
    branch = tracking.get_run(lake, gone.id).run_branch
    if where == "this process":
        lake.delete_branch(branch)
    else:
        script = "import sys, store; store.open(sys.argv[1]).delete_branch(sys.argv[2])"
        done = subprocess.run(
            [sys.executable, "-c", script, lake.location, branch],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    after = tracking.sql(lake, lookup, params=[gone.id]).to_pylist()
    assert after != before and after == scanned(gone.id)
    assert after[0]["commit"] == lake.get_branch(exp).head().id
    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(os.path.join(tmp_path, "fresh-cache")))
    assert tracking.sql(lake, lookup, params=[gone.id]).to_pylist() == after
    assert tracking.sql(lake, lookup, params=[kept.id]).to_pylist() == scanned(kept.id)
