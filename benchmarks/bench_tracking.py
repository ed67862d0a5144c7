"""Tracking benchmarks: logging speed, SQL group-by over 10M points, metric history retrieval,
and run history at scale (leaderboard and one-run lookup at 100 / 1,000 / 10,000 runs, a
group-by over 10M points spread over 10,000 runs).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_tracking [--mlflow-python /tmp/bench-venv/bin/python]

``--scale`` runs only the run-history-at-scale part::

    .venv/bin/python -m benchmarks.bench_tracking --scale 100,1000,10000 \
        --spread-runs 10000 --mlflow-python /tmp/bench-venv/bin/python

Runs for the scale part are *generated*, not trained: :func:`generate_runs` writes exactly the
files a finished run leaves (``run.parquet``, ``params.parquet`` with 3 params, one metric part
with 50 points of ``acc``) through the public store API (``Branch.write_many``), commits them on
the sweep branch, and gives every run its own run branch at that commit, as runs do. MLflow's runs
are made through its client (``create_run``, ``log_batch``, ``set_terminated``).

Every comparison is measured side by side in the same invocation: flowlake's single
``log_metric`` against a plain list append and a bare method call appending a tuple,
``tracking.sql`` against DuckDB over plain Parquet copies of the same points, and (when an
MLflow interpreter is given) MLflow's sqlite store, which runs in that interpreter as a child
process so MLflow never enters flowlake's venv.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import store
import tracking
from tracking import layout

KEYS = ("loss", "acc", "f1", "lr")
GROUP_BY = "SELECT key, avg(value) AS mean, max(value) AS best, count(*) AS n FROM {} GROUP BY key"


def best_of(repeat: int, fn: Any) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class _BareLogger:
    """The floor for a Python-level ``log_metric``: a method with the same signature whose body
    only appends the point tuple (with ``time.time()``) to a list: no buffer, no flusher."""

    def __init__(self) -> None:
        self.points: list[Any] = []
        self._append = self.points.append

    def log_metric(
        self, key: str, value: float, step: int | None = None, timestamp: int | None = None
    ) -> None:
        self._append((key, value, step, time.time() if timestamp is None else timestamp / 1000))


def bench_log_calls(lake: store.Lake, n: int) -> dict[str, float]:
    """Single log_metric calls per second against a plain list append and a bare method call
    appending a tuple, same process."""
    plain: list[Any] = []
    append = plain.append

    def baseline() -> None:
        plain.clear()
        for i in range(n):
            append(i)

    def bare_call() -> None:
        log = _BareLogger().log_metric
        for i in range(n):
            log("loss", i, step=i)

    base_s = best_of(3, baseline)
    plain.clear()
    bare_s = best_of(3, bare_call)
    run = tracking.start_run(lake, name="bench-calls", snapshot_code=False)
    log = run.log_metric
    start = time.perf_counter()
    for i in range(n):
        log("loss", i, step=i)
    calls_s = time.perf_counter() - start
    # Points the background flusher took (written or being written) while the calls ran: a
    # rate measured before the first flush would not show the flusher's cost.
    drained = n - len(run._buffer)
    start = time.perf_counter()
    run.end()
    end_s = time.perf_counter() - start
    return {
        "calls": n,
        "log_metric_per_s": n / calls_s,
        "append_per_s": n / base_s,
        "append_over_log_metric": (n / base_s) / (n / calls_s),
        "bare_method_call_per_s": n / bare_s,
        "bare_call_share_of_log_metric_time": bare_s / calls_s,
        "points_drained_by_flusher_during_calls": drained,
        "end_run_s": end_s,
    }


def bench_group_by(
    lake: store.Lake, runs: int, points_per_run: int, plain_dir: str
) -> dict[str, float]:
    """A group-by over runs * points_per_run metric points: tracking.sql vs DuckDB on Parquet."""
    branch = lake.branch("bench-groupby", source="main")
    start = time.perf_counter()
    for r in range(runs):
        with tracking.start_run(lake, branch=branch.name, name=f"g{r}", snapshot_code=False) as run:
            log = run.log_metric
            for i in range(points_per_run):
                log(KEYS[i & 3], i * 1e-6, step=i)
    log_s = time.perf_counter() - start
    # The same points as plain Parquet files: copies of the part files, read through the store.
    parts = [
        o.path for o in lake.list(branch.name, prefix="_flowlake/runs/") if "/metrics/" in o.path
    ]
    for i, path in enumerate(parts):
        pq.write_table(
            lake.read_table(path, ref=branch.name), os.path.join(plain_dir, f"{i}.parquet")
        )
    con = duckdb.connect()
    plain_query = GROUP_BY.format(f"read_parquet('{plain_dir}/*.parquet')")
    expected = sorted(_rounded(r) for r in con.sql(plain_query).fetchall())
    got = sorted(
        _rounded(tuple(r.values()))
        for r in tracking.sql(lake, GROUP_BY.format("metrics")).to_pylist()
    )
    total = sum(row[3] for row in got)
    assert total == runs * points_per_run and got == expected, (got, expected)
    duck_s = best_of(5, lambda: con.sql(plain_query).fetchall())
    flow_s = best_of(5, lambda: tracking.sql(lake, GROUP_BY.format("metrics")))
    return {
        "points": total,
        "parts": len(parts),
        "log_and_flush_s": log_s,
        "flowlake_sql_s": flow_s,
        "duckdb_plain_parquet_s": duck_s,
        "flowlake_over_duckdb": flow_s / duck_s,
    }


def _rounded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sums in a different order differ in the last bits; compare to 9 digits."""
    return tuple(round(v, 9) if isinstance(v, float) else v for v in row)


def bench_history(lake: store.Lake, points: int) -> dict[str, float]:
    with tracking.start_run(lake, name="bench-history", snapshot_code=False) as run:
        for i in range(points):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
    history = tracking.get_metric_history(lake, run.id, "loss")
    assert history.num_rows == points and history.column("step")[points - 1].as_py() == points - 1
    return {
        "points": points,
        "get_metric_history_s": best_of(
            5, lambda: tracking.get_metric_history(lake, run.id, "loss")
        ),
    }


def bench_verify_cost(lake: store.Lake, points: int, repeat: int = 7) -> dict[str, float]:
    """What verifying reads costs: one metric part of ``points`` points read in place without
    a check (what queries did before) against read through ``lake.read_bytes`` (hash checked),
    and ``get_metric_history`` (which now reads the verified way)."""
    with tracking.start_run(lake, name="bench-verify", snapshot_code=False) as run:
        for i in range(points):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
    part = layout.metrics_part(run.id, 0)
    ref = run.run_branch
    local = lake.locate(part, ref)
    if local is None or not os.path.isfile(local):
        raise SystemExit(
            f"--verify-cost {points}: the part is not a file of its own (an embedded lake keeps "
            "flowlake's records of 8 KiB or less inline): use more points, e.g. 100000"
        )

    def in_place() -> None:
        pq.ParquetFile(local).read(use_threads=False)

    def verified() -> None:
        pq.ParquetFile(pa.BufferReader(lake.read_bytes(part, ref))).read(use_threads=False)

    unchecked, checked = [], []
    for _ in range(repeat):
        unchecked.append(best_of(1, in_place))
        checked.append(best_of(1, verified))
    history = best_of(repeat, lambda: tracking.get_metric_history(lake, run.id, "loss"))
    return {
        "points": points,
        "part_bytes": os.path.getsize(local),
        "read_in_place_unverified_s": min(unchecked),
        "read_verified_s": min(checked),
        "verified_over_unverified": min(checked) / min(unchecked),
        "get_metric_history_s": history,
    }


MLFLOW_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, logging
    logging.disable(logging.WARNING)
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    calls, points, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    client = MlflowClient()
    exp = client.create_experiment("bench", artifact_location=f"{workdir}/artifacts")
    run = client.create_run(exp)
    rid = run.info.run_id
    start = time.perf_counter()
    for i in range(calls):
        client.log_metric(rid, "loss", float(i), step=i)
    calls_s = time.perf_counter() - start
    now = int(time.time() * 1000)
    for lo in range(0, points, 1000):
        batch = [Metric("hist", 1.0 / (i + 1), now, i) for i in range(lo, min(points, lo + 1000))]
        client.log_batch(rid, metrics=batch)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        history = client.get_metric_history(rid, "hist")
        times.append(time.perf_counter() - start)
    assert len(history) == points
    print(json.dumps({"mlflow_version": mlflow.__version__, "log_metric_per_s": calls / calls_s,
                      "get_metric_history_s": min(times), "points": points, "calls": calls}))
    """
)


def bench_mlflow(python: str, calls: int, points: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as workdir:
        done = subprocess.run(
            [python, "-c", MLFLOW_SCRIPT, str(calls), str(points), workdir],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


LEADERBOARD = (
    "SELECT r.name, max(m.value) FROM runs r JOIN metrics m USING (run_id) "
    "WHERE m.key = 'acc' GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
)
LOOKUP = "SELECT status FROM runs WHERE run_id = ?"


def _parquet(rows: list[dict[str, Any]], schema: pa.Schema, **options: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, **options)
    return buffer.getvalue()


def generate_runs(
    lake: store.Lake, branch: str, count: int, points: int, keys: tuple[str, ...], seed: int
) -> list[str]:
    """Write ``count`` finished runs the way runs leave them (see the module docstring);
    returns their ids."""
    rnd = random.Random(seed)
    target = lake.get_branch(branch)
    base = target.head().id
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    ids = [uuid.UUID(int=rnd.getrandbits(128)).hex for _ in range(count)]
    items: list[tuple[str, bytes]] = []
    for i, run_id in enumerate(ids):
        record: dict[str, Any] = {f.name: None for f in layout.RUN_SCHEMA}
        record.update(
            format_version=layout.FORMAT_VERSION,
            run_id=run_id,
            name=f"trial-{seed}-{i}",
            run_namespace=lake.namespace,
            target_branch=target.name,
            run_branch=f"{lake.namespace}/{layout.run_branch_short(run_id)}",
            status="finished",
            user="bench",
            host="bench-host",
            pid=1,
            start_time=t0 + timedelta(seconds=i),
            end_time=t0 + timedelta(seconds=i + 1),
            input_commit=base,
            python_version="3.11",
            python_executable="python",
            platform="linux",
            heartbeat_interval=10.0,
            sessions=1,
        )
        items.append(
            (layout.run_file(run_id, layout.RUN_FILE), _parquet([record], layout.RUN_SCHEMA))
        )
        params = [
            {"run_id": run_id, "key": k, "value": str(rnd.random())}
            for k in ("lr", "depth", "seed")
        ]
        items.append(
            (layout.run_file(run_id, layout.PARAMS_FILE), _parquet(params, layout.KEY_VALUE_SCHEMA))
        )
        metrics = [
            {
                "run_id": run_id,
                "key": keys[s % len(keys)],
                "value": rnd.random(),
                "step": s,
                "timestamp": t0,
            }
            for s in range(points)
        ]
        items.append(
            (
                layout.metrics_part(run_id, 0),
                _parquet(metrics, layout.METRICS_SCHEMA, **layout.METRICS_PARQUET_OPTIONS),
            )
        )
        if len(items) >= 3000:
            target.write_many(items)
            items = []
    if items:
        target.write_many(items)
    commit = target.commit(f"{count} generated runs")
    for run_id in ids:
        lake.branch(layout.run_branch_short(run_id), source=commit.id)
    return ids


def _timed(fn: Any, repeat: int) -> tuple[float, float]:
    """(first call, best of the next ``repeat``) in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    return first, best_of(repeat, fn)


MLFLOW_SCALE_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time, logging
    logging.disable(logging.WARNING)
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    workdir = sys.argv[1]
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    client = MlflowClient()
    exp = client.create_experiment("scale", artifact_location=f"{workdir}/artifacts")
    rnd = random.Random(0)
    ids = []
    order = ["metrics.acc DESC"]
    def timed(fn):
        start = time.perf_counter(); fn(); return time.perf_counter() - start
    # Commands on stdin, one JSON answer per line on stdout.
    for line in sys.stdin:
        command, arg = line.split()
        if command == "grow":
            start = time.perf_counter()
            now = int(time.time() * 1000)
            for i in range(len(ids), int(arg)):
                run = client.create_run(exp, run_name=f"trial-{i}")
                params = [Param(k, str(rnd.random())) for k in ("lr", "depth", "seed")]
                metrics = [Metric("acc", rnd.random(), now, s) for s in range(50)]
                client.log_batch(run.info.run_id, metrics=metrics, params=params)
                client.set_terminated(run.info.run_id)
                ids.append(run.info.run_id)
            answer = {"generate_s": time.perf_counter() - start,
                      "mlflow_version": mlflow.__version__}
        elif command == "leaderboard":
            answer = {"s": timed(lambda: client.search_runs([exp], order_by=order,
                                                             max_results=5))}
        else:
            probe = ids[len(ids) // 2]
            answer = {"s": timed(lambda: client.get_run(probe).info.status)}
        print(json.dumps(answer), flush=True)
    """
)


class _MlflowChild:
    """MLflow's sqlite store in its own interpreter, driven command by command, so each of its
    measurements sits next to flowlake's under the same machine load."""

    def __init__(self, python: str, workdir: str) -> None:
        self.process = subprocess.Popen(
            [python, "-c", MLFLOW_SCALE_SCRIPT, workdir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str, arg: int = 0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command} {arg}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the MLflow child stopped (exit {self.process.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def _lookup_next(lake: store.Lake, others: Any) -> None:
    tracking.sql(lake, LOOKUP, params=[next(others)])


def bench_scale(
    root: str, sizes: list[int], repeat: int, mlflow: _MlflowChild | None, mlflow_max: int
) -> list[dict[str, Any]]:
    """Leaderboard and lookup as the lake grows to each size (runs added between sizes),
    alternating flowlake's and MLflow's calls; each figure is the best of ``repeat``. The
    lookup is measured three times: as SQL (the same run each call), as SQL on a run not
    looked up before on every call, and as ``tracking.get_run``, all against MLflow's
    ``get_run``."""
    lake = store.open(os.path.join(root, "lake-scale"))
    sweep = lake.branch("sweep", source="main")
    out, have, ids = [], 0, []
    for size in sizes:
        start = time.perf_counter()
        ids += generate_runs(lake, sweep.name, size - have, 50, ("acc",), seed=size)
        row: dict[str, Any] = {"runs": size, "generate_s": time.perf_counter() - start}
        have = size
        probe = ids[len(ids) // 2]
        others = iter(ids[::-1])
        ml = mlflow if mlflow is not None and size <= mlflow_max else None
        if ml is not None:
            row["mlflow_generate_s"] = ml.ask("grow", size)["generate_s"]
        for name, call, theirs_name in (
            ("leaderboard", lambda: tracking.sql(lake, LEADERBOARD), "leaderboard"),
            ("lookup", lambda probe=probe: tracking.sql(lake, LOOKUP, params=[probe]), "lookup"),
            ("get_run", lambda probe=probe: tracking.get_run(lake, probe), "lookup"),
            # A run not looked up before on every call, the cost of a first lookup of each
            # run (after the leaderboard's scan, which copied settled runs' rows for lookups).
            ("lookup_other", lambda others=others: _lookup_next(lake, others), "lookup"),
        ):
            start = time.perf_counter()
            call()
            row[f"{name}_first_s"] = time.perf_counter() - start
            flow, theirs = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                call()
                flow.append(time.perf_counter() - start)
                if ml is not None:
                    theirs.append(ml.ask(theirs_name)["s"])
            row[f"{name}_s"] = min(flow)
            if theirs:
                row[f"mlflow_{name}_s"] = min(theirs)
                row[f"{name}_speedup_over_mlflow"] = min(theirs) / min(flow)
        assert tracking.sql(lake, LOOKUP, params=[probe]).to_pylist() == [{"status": "finished"}]
        assert tracking.sql(lake, LEADERBOARD).num_rows == 5
        row["load_average"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        out.append(row)
    lake.close()
    return out


def bench_spread_group_by(root: str, runs: int, points: int, repeat: int) -> dict[str, Any]:
    """A group-by over ``runs * points`` metric points spread over ``runs`` runs, against
    DuckDB over the same points in one plain Parquet file (timed alternately)."""
    lake = store.open(os.path.join(root, "lake-spread"))
    sweep = lake.branch("spread", source="main")
    start = time.perf_counter()
    generate_runs(lake, sweep.name, runs, points, KEYS, seed=7)
    made = time.perf_counter() - start
    plain = os.path.join(root, "spread.parquet")
    query = GROUP_BY.format("metrics")
    start = time.perf_counter()
    tracking.sql(lake, query)
    first = time.perf_counter() - start
    everything = tracking.sql(lake, "SELECT run_id, key, value, step, timestamp FROM metrics")
    pq.write_table(everything, plain)
    con = duckdb.connect()
    plain_query = GROUP_BY.format(f"read_parquet('{plain}')")
    expected = sorted(_rounded(r) for r in con.sql(plain_query).fetchall())
    got = sorted(_rounded(tuple(r.values())) for r in tracking.sql(lake, query).to_pylist())
    assert got == expected and sum(r[3] for r in got) == runs * points, (got, expected)
    flow, duck = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        tracking.sql(lake, query)
        flow.append(time.perf_counter() - start)
        start = time.perf_counter()
        con.sql(plain_query).fetchall()
        duck.append(time.perf_counter() - start)
    lake.close()
    return {
        "runs": runs,
        "points": runs * points,
        "generate_s": made,
        "flowlake_first_query_s": first,
        "flowlake_sql_s": min(flow),
        "duckdb_one_parquet_s": min(duck),
        "flowlake_over_duckdb": min(flow) / min(duck),
        "load_average": os.getloadavg()[0],
    }


def main_scale(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.scale.split(",")]
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "duckdb": duckdb.__version__,
        "runs_made_by": "generate_runs (public store API, files as runs write them)",
    }
    root = tempfile.mkdtemp(prefix="bench-scale-")
    cache = tempfile.mkdtemp(prefix="bench-scale-cache-")
    os.environ["FLOWLAKE_CACHE_DIR"] = cache  # a cold local index to start with
    mlflow = _MlflowChild(args.mlflow_python, root) if args.mlflow_python else None
    try:
        results["scale"] = bench_scale(root, sizes, args.repeat, mlflow, args.mlflow_max_runs)
        if mlflow is not None:
            mlflow.close()
            mlflow = None
        if args.spread_runs:
            results["spread_group_by"] = bench_spread_group_by(
                root, args.spread_runs, args.spread_points, args.repeat
            )
            print(json.dumps(results["spread_group_by"]), flush=True)
    finally:
        if mlflow is not None:
            mlflow.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default=None, help="run counts, e.g. 100,1000,10000")
    parser.add_argument(
        "--mlflow-max-runs", type=int, default=10**9, help="measure MLflow up to this many runs"
    )
    parser.add_argument("--spread-runs", type=int, default=0, help="runs for the spread group-by")
    parser.add_argument("--spread-points", type=int, default=1000, help="points per spread run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--verify-cost", type=int, default=0, help="only measure verified reads of N points"
    )
    parser.add_argument("--calls", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points-per-run", type=int, default=1_000_000)
    parser.add_argument("--history-points", type=int, default=100_000)
    parser.add_argument("--mlflow-python", default=None, help="python of a venv with mlflow")
    parser.add_argument("--mlflow-calls", type=int, default=1000)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.scale:
        main_scale(args)
        return
    if args.verify_cost:
        with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
            lake = store.open(os.path.join(tmp, "lake"))
            print(json.dumps(bench_verify_cost(lake, args.verify_cost), indent=2))
            lake.close()
        return
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "duckdb": duckdb.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        lake = store.open(os.path.join(tmp, "lake-calls"))
        results["log_metric"] = bench_log_calls(lake, args.calls)
        lake.close()
        lake = store.open(os.path.join(tmp, "lake-groupby"))
        print(json.dumps(results["log_metric"]), flush=True)
        plain_dir = os.path.join(tmp, "plain")
        os.makedirs(plain_dir)
        results["group_by"] = bench_group_by(lake, args.runs, args.points_per_run, plain_dir)
        print(json.dumps(results["group_by"]), flush=True)
        lake.close()
        lake = store.open(os.path.join(tmp, "lake-history"))
        results["history"] = bench_history(lake, args.history_points)
        print(json.dumps(results["history"]), flush=True)
        lake.close()
    if args.mlflow_python:
        ml = bench_mlflow(args.mlflow_python, args.mlflow_calls, args.history_points)
        results["mlflow"] = ml
        results["log_metric_over_mlflow"] = (
            results["log_metric"]["log_metric_per_s"] / ml["log_metric_per_s"]
        )
        results["history_speedup_over_mlflow"] = (
            ml["get_metric_history_s"] / results["history"]["get_metric_history_s"]
        )
        print(json.dumps(ml), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
