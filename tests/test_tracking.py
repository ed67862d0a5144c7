"""Tracking: runs, their failure paths, SQL over run history, lineage and the CLI.

Every test uses the public store API only, so it runs on each backend of the ``lake`` fixture.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from typer.testing import CliRunner

import store
import tracking
from store.errors import BranchNotFoundError, InvalidArgumentError, RefNotFoundError, StoreError
from tracking import buffer, layout, liveness
from ui.cli_tracking import runs_app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(lake: store.Lake, branch: str | None, name: str, **kw: object) -> tracking.Run:
    kw.setdefault("snapshot_code", False)
    return tracking.start_run(lake, branch=branch, name=name, **kw)  # type: ignore[arg-type]


def test_params_metrics_tags_round_trip_through_sql(lake: store.Lake) -> None:
    exp = lake.branch("sweep", source="main")
    logged: dict[str, dict[str, list[tuple[int, float]]]] = {}
    ids = {}
    for lr in (0.1, 0.01):
        with _start(lake, exp.name, f"lr={lr}") as run:
            run.log_params({"lr": lr, "depth": 6})
            run.log_param("optimizer", "adam")
            run.set_tag("stage", "candidate")
            points = [(step, 1.0 / (step + 1) + lr) for step in range(500)]
            for step, value in points:
                run.log_metric("loss", value, step=step)
            run.log_metrics({"acc": 1 - lr, "f1": 0.5 + lr}, step=500)
            logged[run.id] = {"loss": points, "acc": [(500, 1 - lr)], "f1": [(500, 0.5 + lr)]}
            ids[run.id] = lr
    runs = tracking.sql(lake, "SELECT run_id, name, status, target_branch FROM runs").to_pylist()
    assert {r["run_id"] for r in runs} == set(ids)
    assert all(r["status"] == "finished" and r["target_branch"] == exp.name for r in runs)
    params = tracking.sql(lake, "SELECT run_id, key, value FROM params").to_pylist()
    assert {(p["run_id"], p["key"], p["value"]) for p in params} == {
        (rid, k, v)
        for rid, lr in ids.items()
        for k, v in (("lr", str(lr)), ("depth", "6"), ("optimizer", "adam"))
    }
    tags = tracking.sql(lake, "SELECT run_id, key, value FROM tags").to_pylist()
    assert {(t["run_id"], t["key"], t["value"]) for t in tags} == {
        (rid, "stage", "candidate") for rid in ids
    }
    metrics = tracking.sql(lake, "SELECT run_id, key, step, value FROM metrics").to_pylist()
    got: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for m in metrics:
        got.setdefault((m["run_id"], m["key"]), []).append((m["step"], m["value"]))
    expected = {(rid, k): pts for rid, d in logged.items() for k, pts in d.items()}
    assert {k: sorted(v) for k, v in got.items()} == expected
    best = tracking.sql(
        lake,
        "SELECT r.name, max(m.value) AS best FROM runs r JOIN metrics m USING (run_id) "
        "WHERE m.key = 'acc' GROUP BY 1 ORDER BY 2 DESC",
    ).to_pylist()
    assert best == [{"name": "lr=0.01", "best": 0.99}, {"name": "lr=0.1", "best": 0.9}]
    # Finished runs are merged into the branch they started on; main is untouched.
    assert {p.split("/")[2] for p in _paths(lake, exp.name, "_flowlake/runs/")} == set(ids)
    assert _paths(lake, "main", "_flowlake/") == []


def _paths(lake: store.Lake, ref: str, prefix: str) -> list[str]:
    return [o.path for o in lake.list(ref, prefix=prefix)]


def test_every_view_has_source_columns(lake: store.Lake) -> None:
    with _start(lake, None, "solo") as run:
        run.log_metric("m", 1.0)
        run.log_param("p", 1)
        run.set_tag("t", 1)
        run.log_table("tbl", pa.table({"x": [1]}))
    for view in ("runs", "params", "metrics", "tags", "artifacts", "commits", "branches"):
        cols = tracking.sql(lake, f"SELECT * FROM {view} LIMIT 0").column_names
        assert {"ref", "namespace", "branch", "commit"} <= set(cols), view
    row = tracking.sql(lake, "SELECT namespace, branch, commit FROM params").to_pylist()[0]
    assert row == {
        "namespace": "user:tester",
        "branch": run.run_branch,
        "commit": lake.resolve(run.run_branch),
    }
    events = tracking.sql(
        lake, "SELECT commit, event FROM commits WHERE run_id = ?", params=[run.id]
    ).to_pylist()
    # An empty start is not committed: it is committed with the run's final state, in the
    # run's one commit on its branch.
    assert sorted(e["event"] for e in events) == ["finished"]
    by_event = {e["event"]: e["commit"] for e in events}
    assert by_event["finished"] == run.output_commit
    assert lake.log(run.run_branch)[0].id == by_event["finished"]
    branch_rows = tracking.sql(lake, "SELECT branch, run_id, protected FROM branches").to_pylist()
    assert {"branch": run.run_branch, "run_id": run.id, "protected": False} in branch_rows
    assert {"branch": "main", "run_id": None, "protected": True} in branch_rows


def test_metrics_are_flushed_in_the_background_while_running(lake: store.Lake) -> None:
    run = _start(lake, None, "live", flush_interval=0.05)
    try:
        for i in range(1000):
            run.log_metric("x", float(i), step=i)
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        count = 0
        while datetime.now(UTC) < deadline and count < 1000:
            count = tracking.sql(lake, "SELECT count(*) AS n FROM metrics").column("n")[0].as_py()
        assert count == 1000
        assert tracking.get_run(lake, run.id).status == "running"
    finally:
        run.end()


def test_run_that_raises_is_failed_and_keeps_artifacts_on_its_own_branch(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp", source="main")
    before_exp, before_main = lake.resolve(exp.name), lake.resolve("main")
    with pytest.raises(RuntimeError, match="diverged"), _start(lake, exp.name, "doomed") as run:
        run.log_metric("loss", 3.0, step=0)
        art = run.log_table("partial", pa.table({"a": [1, 2]}))
        raise RuntimeError("loss diverged")
    assert run.status == "failed"
    assert lake.resolve(exp.name) == before_exp
    assert lake.resolve("main") == before_main
    assert lake.read_table(art.path, ref=run.run_branch).column("a").to_pylist() == [1, 2]
    assert not lake.exists(art.path, ref=exp.name)
    row = tracking.sql(lake, "SELECT status, error, output_commit FROM runs").to_pylist()[0]
    assert row["status"] == "failed"
    assert "RuntimeError: loss diverged" in row["error"]
    assert row["output_commit"] == run.output_commit
    assert lake.exists(f"_flowlake/runs/{run.id}/run.parquet", ref=run.output_commit)
    loss = tracking.sql(lake, "SELECT value FROM metrics WHERE key = 'loss'").to_pylist()
    assert loss == [{"value": 3.0}]


def test_keyboard_interrupt_marks_the_run_killed(lake: store.Lake) -> None:
    with pytest.raises(KeyboardInterrupt), _start(lake, None, "interrupted") as run:
        raise KeyboardInterrupt
    assert tracking.get_run(lake, run.id).status == "killed"


_CHILD = textwrap.dedent(
    """
    import sys, time
    import store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch=sys.argv[2], name="victim", snapshot_code=False,
                             flush_interval=0.05, heartbeat_interval=0.2)
    run.log_param("p", 1)
    for i in range(100):
        run.log_metric("m", float(i), step=i)
    run.flush()
    print(run.id, flush=True)
    while True:
        run.log_metric("late", 1.0)
        time.sleep(0.001)
    """
)


@pytest.fixture
def lake_location(lake_access) -> str:  # type: ignore[no-untyped-def]
    """The lake's location; the environment lets another process or the CLI open it by that."""
    return str(lake_access.location)


def test_killed_process_shows_killed_and_history_stays_readable(
    lake: store.Lake, lake_location: str
) -> None:
    exp = lake.branch("exp", source="main")
    env = dict(os.environ, PYTHONPATH=REPO, FLOWLAKE_USER="tester")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, lake_location, exp.name],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert len(run_id) == 32, run_id
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    row = tracking.sql(lake, "SELECT status, recorded_status FROM runs").to_pylist()[0]
    assert row == {"status": "killed", "recorded_status": "running"}
    assert tracking.sql(lake, "SELECT count(*) AS n FROM metrics WHERE key = 'm'").to_pylist() == [
        {"n": 100}
    ]
    # The dead process committed nothing: what it flushed waits, uncommitted, on its branch.
    run_commits = "SELECT event FROM commits WHERE run_id = ?"
    assert tracking.sql(lake, run_commits, params=[run_id]).num_rows == 0
    assert lake.resolve(exp.name) == lake.resolve("main")
    # The run can be resumed and finished; what the dead process flushed is kept.
    with tracking.resume_run(lake, run_id) as resumed:
        resumed.log_metric("m", 100.0, step=100)
    assert tracking.get_run(lake, run_id).status == "finished"
    events = tracking.sql(lake, run_commits, params=[run_id]).column("event").to_pylist()
    assert sorted(events) == ["finished", "merge", "resume"]
    history = tracking.get_metric_history(lake, run_id, "m")
    assert history.column("step").to_pylist() == list(range(101))
    assert lake.exists(f"_flowlake/runs/{run_id}/run.parquet", ref=exp.name)


def test_stale_when_heartbeat_stops_on_another_host() -> None:
    now = datetime.now(UTC)
    args = ("running", "elsewhere.invalid", 123)
    assert liveness.effective_status(*args, now - timedelta(seconds=1), 10.0, now) == "running"
    assert liveness.effective_status(*args, now - timedelta(seconds=60), 10.0, now) == "stale"
    assert liveness.effective_status(*args, None, 10.0, now) == "stale"
    assert liveness.effective_status("finished", *args[1:], None, None, now) == "finished"


def test_resume_by_id_logs_more(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    with _start(lake, exp.name, "first") as run:
        run.log_param("lr", 0.1)
        run.log_metric("loss", 1.0, step=0)
    first_output = run.output_commit
    with tracking.start_run(lake, run_id=run.id) as again:
        assert again.id == run.id and again.params == {"lr": "0.1"}
        again.log_metric("loss", 0.5, step=1)
    with tracking.resume_run(lake, run.id) as third:
        third.log_metric("loss", 0.25, step=2)
    history = tracking.get_metric_history(lake, run.id, "loss").to_pylist()
    assert [(h["step"], h["value"]) for h in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    record = tracking.sql(lake, "SELECT status, sessions, output_commit FROM runs").to_pylist()
    assert record[0]["status"] == "finished" and record[0]["sessions"] == 3
    assert record[0]["output_commit"] != first_output
    merged = tracking.sql(lake, "SELECT count(*) AS n FROM metrics", ref=exp.name)
    assert merged.column("n")[0].as_py() == 3
    with pytest.raises(tracking.RunNotFoundError):
        tracking.resume_run(lake, "0" * 32)


def test_metric_history_matches_sql_across_parts(lake: store.Lake) -> None:
    """get_metric_history reads the parts itself; it must agree with the metrics view."""
    run = _start(lake, None, "history")
    try:
        for step in (5, 3, None, 3, 7):
            run.log_metric("loss", float(step or 0), step=step)
            run.log_metric("acc", 1.0, step=step)
            run.flush()  # one part per point: the history is spread over several parts
        run.log_metric("loss", 9.0, step=1)  # still buffered: not in the history yet
        history = tracking.get_metric_history(lake, run.id, "loss")
        assert history.column_names == ["step", "value", "timestamp"]
        assert history.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        assert history.column("step").to_pylist() == [None, 3, 3, 5, 7]
        stamps = history.column("timestamp").to_pylist()
        assert stamps[1] < stamps[2]  # equal steps in time order
        expected = tracking.sql(
            lake,
            "SELECT step, value, epoch_us(timestamp) AS t FROM metrics WHERE key = 'loss' "
            "ORDER BY step NULLS FIRST, timestamp",
        ).to_pylist()
        got = pa.table(
            [history["step"], history["value"], history["timestamp"].cast(pa.int64())],
            names=["step", "value", "t"],
        )
        assert got.to_pylist() == expected
        assert tracking.get_metric_history(lake, run.id, "absent").num_rows == 0
        parts = _paths(lake, run.run_branch, f"_flowlake/runs/{run.id}/metrics/")
        assert len(parts) == 5
        assert lake.read_table(parts[0], ref=run.run_branch).schema == layout.METRICS_SCHEMA
    finally:
        run.end()
    steps = tracking.get_metric_history(lake, run.id, "loss").column("step").to_pylist()
    assert steps == [None, 1, 3, 3, 5, 7]
    with pytest.raises(tracking.RunNotFoundError):
        tracking.get_metric_history(lake, "0" * 32, "loss")
    with pytest.raises(tracking.RunNotFoundError):
        tracking.get_metric_history(lake, "not-a-run", "loss")


def test_logging_rules(lake: store.Lake) -> None:
    with _start(lake, None, "rules") as run:
        log = run.log_metric  # held across the end: must refuse points afterwards too
        run.log_param("lr", 0.1)
        run.log_param("lr", 0.1)
        with pytest.raises(tracking.ParamChangedError):
            run.log_param("lr", 0.2)
        with pytest.raises(StoreError):
            run.set_tag("", "x")
        with pytest.raises(tracking.InvalidMetricError, match="not a real number"):
            run.log_metric("weird", "not a number")  # type: ignore[arg-type]
        run.log_metric("weird", float("nan"))
    with pytest.raises(tracking.RunStateError):
        run.log_metric("loss", 1.0)
    with pytest.raises(tracking.RunStateError):
        log("loss", 1.0)
    with pytest.raises(tracking.RunStateError):
        run.log_metrics({"loss": 1.0})
    with pytest.raises(tracking.RunStateError):
        run.log_param("x", 1)
    value = tracking.sql(lake, "SELECT isnan(value) AS nan FROM metrics").to_pylist()
    assert value == [{"nan": True}]


def test_queries_as_of_refs_and_side_by_side(lake: store.Lake) -> None:
    exp = lake.branch("exp", source="main")
    with _start(lake, exp.name, "a") as a:
        a.log_metric("acc", 0.7)
    lake.tag("v1", exp.name)
    with _start(lake, exp.name, "b") as b:
        b.log_metric("acc", 0.8)
    old = tracking.sql(lake, "SELECT name, ref, commit FROM runs", ref="v1").to_pylist()
    assert old == [{"name": "a", "ref": "v1", "commit": lake.resolve("v1")}]
    now = tracking.sql(lake, "SELECT name FROM runs ORDER BY name", ref=exp.name)
    assert now.column("name").to_pylist() == ["a", "b"]
    compared = tracking.sql(
        lake,
        "SELECT ref, count(*) AS runs, max(value) AS best FROM metrics "
        "WHERE key = 'acc' GROUP BY ref ORDER BY ref",
        refs=["v1", exp.name],
    ).to_pylist()
    assert compared == [
        {"ref": exp.name, "runs": 2, "best": 0.8},
        {"ref": "v1", "runs": 1, "best": 0.7},
    ]
    new_only = tracking.sql(
        lake,
        "SELECT n.name FROM runs n LEFT JOIN runs o ON o.run_id = n.run_id AND o.ref = 'v1' "
        "WHERE n.ref = ? AND o.run_id IS NULL",
        refs=["v1", exp.name],
        params=[exp.name],
    )
    assert new_only.column("name").to_pylist() == ["b"]
    assert tracking.sql(lake, "SELECT count(*) AS n FROM runs", ref="main").to_pylist() == [
        {"n": 0}
    ]
    assert tracking.sql(lake, "SELECT name FROM runs", ref=f"{exp.name}~1").num_rows == 1
    with pytest.raises(RefNotFoundError):
        tracking.sql(lake, "SELECT 1", ref="no-such-ref")


def test_queries_are_read_only(lake: store.Lake, tmp_path: os.PathLike[str]) -> None:
    with _start(lake, None, "r") as run:
        run.log_metric("m", 1.0)
    heads = {b.name: b.head for b in lake.branches(all_namespaces=True)}
    secret = os.path.join(tmp_path, "secret.csv")
    with open(secret, "w") as f:
        f.write("a\n1\n")
    target = os.path.join(tmp_path, "out.csv")
    attacks = [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM glob('/*')",
        f"COPY (SELECT * FROM runs) TO '{target}'",
        f"ATTACH '{os.path.join(tmp_path, 'x.db')}' AS x",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT 1; SELECT 2",
        f"SELECT * FROM runs; COPY (SELECT 1) TO '{target}'",
    ]
    for attack in attacks:
        with pytest.raises(tracking.QueryError):
            tracking.sql(lake, attack)
    assert not os.path.exists(target)
    assert {b.name: b.head for b in lake.branches(all_namespaces=True)} == heads
    with pytest.raises(tracking.QueryError, match="disabled by configuration"):
        tracking.sql(lake, f"SELECT * FROM read_csv('{secret}')")


def test_bad_query_gets_duckdbs_message(lake: store.Lake) -> None:
    with pytest.raises(tracking.QueryError, match="syntax error") as info:
        tracking.sql(lake, "SELEC name FROM runs")
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)
    assert info.value.__cause__ is None
    with pytest.raises(tracking.QueryError, match="nope"):
        tracking.sql(lake, "SELECT nope FROM runs")
    with pytest.raises(tracking.QueryError, match="empty"):
        tracking.sql(lake, "   ")


def test_lineage_both_directions(lake: store.Lake, tmp_path: os.PathLike[str]) -> None:
    code = os.path.join(tmp_path, "project")
    os.makedirs(code)
    with open(os.path.join(code, "train.py"), "w") as f:
        f.write("print('train')\n")
    data = lake.branch("data", source="main")
    data.write_table("raw/x.parquet", pa.table({"x": [1, 2, 3]}))
    data_commit = data.commit("raw data").id
    with tracking.start_run(lake, branch=data.name, name="prep", code_dir=code) as prep:
        prep.log_table("features", pa.table({"f": [1.0]}), path="features/f.parquet")
    with tracking.start_run(
        lake, branch=data.name, name="train", code_dir=code, parent_run_id=prep.id
    ) as train:
        train.log_model("clf", {"weights": [1, 2]})
    up = tracking.lineage(lake, train.id)
    assert up.run is not None and up.run.run_id == train.id
    assert up.input_commit == prep.merge_commit
    assert [r.run_id for r in up.parent_runs] == [prep.id]
    assert up.code == (("train.py", hashlib.sha256(b"print('train')\n").hexdigest()),)
    assert [a.kind for a in up.artifacts] == ["model"]
    assert pickle.loads(lake.read_bytes(up.artifacts[0].path, ref=data.name)) == {"weights": [1, 2]}
    down = tracking.lineage(lake, data_commit)
    assert down.run is None
    assert [r.run_id for r in down.used_by] == [prep.id]
    assert [r.run_id for r in down.downstream_runs] == [train.id]
    from_prep = tracking.lineage(lake, prep.id)
    assert [r.run_id for r in from_prep.downstream_runs] == [train.id]
    assert from_prep.parent_runs == ()
    by_merge = tracking.lineage(lake, prep.merge_commit or "")
    assert by_merge.run is not None and by_merge.run.run_id == prep.id
    with pytest.raises(tracking.RunNotFoundError):
        tracking.lineage(lake, "f" * 32)


def test_code_snapshot_environment_and_artifact_hashes(
    lake: store.Lake, tmp_path: os.PathLike[str]
) -> None:
    code = os.path.join(tmp_path, "proj")
    os.makedirs(os.path.join(code, "pkg"))
    os.makedirs(os.path.join(code, ".venv"))
    files = {"main.py": b"x = 1\n", "pkg/mod.py": b"y = 2\n", "conf.yaml": b"a: 1\n"}
    for rel, data in files.items():
        with open(os.path.join(code, rel), "wb") as f:
            f.write(data)
    for skipped in ("data.bin", ".venv/lib.py"):
        with open(os.path.join(code, skipped), "wb") as f:
            f.write(b"skip")
    model_dir = os.path.join(tmp_path, "model")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "weights.bin"), "wb") as f:
        f.write(b"\x00\x01" * 5000)
    with tracking.start_run(lake, name="snap", code_dir=code) as run:
        arts = run.log_model("net", model_dir)
    snap = tracking.sql(lake, "SELECT path, sha256, size FROM code ORDER BY path").to_pylist()
    assert snap == [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in sorted(files.items())
    ]
    for row in snap:
        blob = f"_flowlake/code/{row['sha256'][:2]}/{row['sha256']}"
        assert lake.read_bytes(blob, ref=run.run_branch) == files[row["path"]]
    packages = tracking.sql(lake, "SELECT name FROM environment").column("name").to_pylist()
    assert "pyarrow" in {p.lower() for p in packages}
    record = tracking.get_run(lake, run.id)
    assert record.code_root == code and record.git_commit is None
    assert record.python_version.startswith(sys.version.split()[0])
    (art,) = arts
    assert art.sha256 == hashlib.sha256(b"\x00\x01" * 5000).hexdigest()
    assert art.size == 10000 and art.path.endswith("models/net/weights.bin")
    assert lake.read_bytes(art.path, ref=run.run_branch) == b"\x00\x01" * 5000
    rows = tracking.sql(lake, "SELECT name, kind, sha256 FROM artifacts").to_pylist()
    assert rows == [{"name": "net", "kind": "model", "sha256": art.sha256}]


def test_buffer_loses_nothing_appended_during_a_drain() -> None:
    buf = buffer.MetricBuffer()
    drained: list[buffer.Point] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            drained.extend(buf.drain())

    thread = threading.Thread(target=drain)
    thread.start()
    for i in range(200_000):
        buf.append(("k", float(i), i, 0.0))
    done.set()
    thread.join()
    drained.extend(buf.drain())
    assert [p[2] for p in drained] == list(range(200_000))


def test_cli_runs_and_sql(lake: store.Lake, lake_location: str) -> None:
    exp = lake.branch("exp", source="main")
    with _start(lake, exp.name, "cli-run") as run:
        run.log_metric("acc", 0.5)
    with pytest.raises(ValueError), _start(lake, exp.name, "cli-bad"):
        raise ValueError("boom")
    cli = CliRunner()
    common = ["--lake", lake_location, "--namespace", "user:tester"]
    out = cli.invoke(runs_app, ["runs", *common])
    assert out.exit_code == 0, out.output
    assert "cli-run" in out.output and "cli-bad" in out.output
    out = cli.invoke(runs_app, ["runs", "--status", "failed", *common])
    assert "cli-bad" in out.output and "cli-run" not in out.output
    out = cli.invoke(runs_app, ["runs", "--branch", "exp", "--name", "RUN", *common])
    assert "cli-run" in out.output and "cli-bad" not in out.output
    query = "SELECT name, status FROM runs ORDER BY name"
    out = cli.invoke(runs_app, ["sql", query, "--json", *common])
    assert out.exit_code == 0, out.output
    assert [json.loads(line) for line in out.output.splitlines()] == [
        {"name": "cli-bad", "status": "failed"},
        {"name": "cli-run", "status": "finished"},
    ]
    out = cli.invoke(runs_app, ["sql", query, "--csv", *common])
    assert out.output.splitlines() == ["name,status", "cli-bad,failed", "cli-run,finished"]
    out = cli.invoke(runs_app, ["sql", "SELECT count(*) AS n FROM metrics", *common])
    assert out.exit_code == 0 and "1" in out.output
    out = cli.invoke(runs_app, ["sql", "SELEC 1", *common])
    assert out.exit_code == 1 and "syntax error" in out.output
    env = {"FLOWLAKE_LAKE": lake_location, "FLOWLAKE_USER": "tester"}
    out = cli.invoke(runs_app, ["sql", "SELECT count(*) AS n FROM runs", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.output) == {"n": 2}


def test_a_run_whose_branch_was_deleted_after_its_merge_is_read_from_where_it_merged(
    lake: store.Lake,
) -> None:
    exp = lake.branch("exp")
    with tracking.start_run(lake, branch=exp.name, name="kept", snapshot_code=False) as run:
        run.log_metric("loss", 0.5, step=1)
        run.log_param("lr", "0.1")
    lake.delete_branch(run.run_branch)
    assert tracking.get_run(lake, run.id).status == "finished"
    assert tracking.get_metric_history(lake, run.id, "loss").column("step").to_pylist() == [1]
    assert tracking.sql(
        lake, "SELECT status FROM runs WHERE run_id = ?", params=[run.id]
    ).to_pylist() == [{"status": "finished"}]
    with pytest.raises(tracking.RunNotFoundError):
        tracking.get_run(lake, "0" * 32)


def test_search_runs_refuses_an_unknown_status_naming_the_valid_ones(lake: store.Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="'bogus'.*running, finished, failed, killed"):
        tracking.search_runs(lake, status="bogus")
    with pytest.raises(InvalidArgumentError, match="limit must be an int >= 0"):
        tracking.search_runs(lake, limit=-1)
    assert tracking.search_runs(lake, status="stale").num_rows == 0


def test_search_runs_refuses_a_branch_that_does_not_exist_yet_finds_a_deleted_branchs_runs(
    lake: store.Lake,
) -> None:
    with pytest.raises(BranchNotFoundError, match="branch 'nope' does not exist"):
        tracking.search_runs(lake, branch="nope")
    exp = lake.branch("exp")
    assert tracking.search_runs(lake, branch="exp").num_rows == 0  # exists, no run yet
    with _start(lake, exp.name, "kept") as run:
        run.log_metric("loss", 0.5)
    lake.delete_branch(exp.name)
    assert tracking.search_runs(lake, branch=exp.name).column("run_id").to_pylist() == [run.id]
    # Another filter leaving no row does not turn the deleted branch into an unknown one.
    assert tracking.search_runs(lake, branch=exp.name, status="failed").num_rows == 0


def _lake_functions() -> list[str]:
    """Every public tracking function whose first parameter is ``lake``."""
    found = []
    for name in tracking.__all__:
        function = getattr(tracking, name)
        if inspect.isfunction(function):
            parameters = list(inspect.signature(function).parameters)
            if parameters[:1] == ["lake"]:
                found.append(name)
    return found


def test_the_public_tracking_functions_taking_a_lake_are_all_checked() -> None:
    assert {"sql", "search_runs", "get_run", "get_metric_history", "start_run", "resume_run"} | {
        "lineage",
        "deploy",
        "compact",
        "promote",
    } <= set(_lake_functions())


@pytest.mark.parametrize("name", _lake_functions())
def test_a_public_tracking_function_given_no_lake_names_itself_and_what_it_got(
    name: str, embedded_lake: store.Lake
) -> None:
    function = getattr(tracking, name)
    required = [
        p
        for p in list(inspect.signature(function).parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    others = ["x"] * len(required)
    with pytest.raises(
        InvalidArgumentError, match=rf"^tracking\.{name} takes a Lake .* str '\./lake'$"
    ):
        function("./lake", *others)
    with pytest.raises(
        InvalidArgumentError, match=r"not Branch\('main'\) \(its \.lake is the Lake\)"
    ):
        function(embedded_lake.get_branch("main"), *others)


@pytest.mark.parametrize(
    ("typo", "closest"),
    [("runz", "runs"), ("metric", "metrics"), ("Paramz", "params"), ("branch", "branches")],
)
def test_a_query_on_an_unknown_table_names_the_closest_views_keeping_duckdbs_message(
    embedded_lake: store.Lake, typo: str, closest: str
) -> None:
    with pytest.raises(tracking.QueryError) as err:
        tracking.sql(embedded_lake, f"SELECT * FROM runs JOIN {typo} USING (run_id)")
    message = str(err.value)
    assert f"Table with name {typo} does not exist" in message
    assert f"flowlake views closest to {typo!r}: {closest}" in message


def test_a_query_on_a_table_like_no_view_lists_every_view(embedded_lake: store.Lake) -> None:
    with pytest.raises(tracking.QueryError, match="no view 'xyzzy'; its views: runs, params"):
        tracking.sql(embedded_lake, "SELECT * FROM xyzzy")


def test_lineage_of_neither_a_run_id_nor_a_ref_says_what_it_traces(lake: store.Lake) -> None:
    for target in ("nope", "lr=0.1", "main~5", "x~y"):
        with pytest.raises(
            RefNotFoundError, match=rf"run id .* or a ref .*{re.escape(repr(target))} is neither"
        ):
            tracking.lineage(lake, target)
    with pytest.raises(tracking.RunNotFoundError, match="no run 0{32} in this lake"):
        tracking.lineage(lake, "0" * 32)
    for bad in ("", None, 5):
        with pytest.raises(InvalidArgumentError, match="takes a run id or a ref"):
            tracking.lineage(lake, bad)  # type: ignore[arg-type]


def test_a_run_is_found_by_the_short_id_the_cli_shows(lake: store.Lake) -> None:
    with tracking.start_run(lake, name="short") as run:
        run.log_metric("loss", 0.5, step=1)
    assert tracking.get_run(lake, run.id[:8]).run_id == run.id
    assert tracking.get_metric_history(lake, run.id[:8], "loss").num_rows == 1
    others = [f"abcd{n:028x}" for n in (1, 2)]
    for other in others:
        lake.branch(f"run-{other}")
    with pytest.raises(store.errors.AmbiguousRefError, match="2 runs start with abcd"):
        tracking.get_run(lake, "abcd")
    with pytest.raises(tracking.RunNotFoundError, match="no run id starts with 0123abcd"):
        tracking.get_run(lake, "0123abcd")
    with pytest.raises(tracking.RunNotFoundError, match="not a run id"):
        tracking.get_run(lake, "abc")
