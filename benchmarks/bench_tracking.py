"""Tracking benchmarks: logging speed, SQL group-by over 10M points, metric history retrieval.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_tracking [--mlflow-python /tmp/bench-venv/bin/python]

Every comparison is measured side by side in the same invocation: flowlake's single
``log_metric`` against a plain list append and a bare method call appending a tuple,
``tracking.sql`` against DuckDB over plain Parquet copies of the same points, and (when an
MLflow interpreter is given) MLflow's sqlite store, which runs in that interpreter as a child
process so MLflow never enters flowlake's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import duckdb
import pyarrow.parquet as pq

import store
import tracking

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points-per-run", type=int, default=1_000_000)
    parser.add_argument("--history-points", type=int, default=100_000)
    parser.add_argument("--mlflow-python", default=None, help="python of a venv with mlflow")
    parser.add_argument("--mlflow-calls", type=int, default=1000)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
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
