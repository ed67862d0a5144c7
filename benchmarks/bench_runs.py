"""Run lifecycle benchmark: an empty run (start + end) against MLflow's start_run/end_run.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_runs --mlflow-python /tmp/mlflow-venv/bin/python

Both sides run in the same invocation, in alternating rounds so that a noisy neighbour slows
both alike. flowlake: ``tracking.start_run(lake, branch=..., name=...)`` then ``end()`` on an
embedded lake, with the code snapshot and the environment capture on, as a user gets them by
default. The project both sides run in is a fresh clone of this repository's ``HEAD`` (a quiet
work tree, as a user's project is during a sweep; this one may be edited while the benchmark
runs). MLflow (its own venv, run as a child process so MLflow never
enters flowlake's venv): ``mlflow.start_run(run_name=...)`` then ``mlflow.end_run()`` on a
sqlite tracking store, from the same folder (so MLflow records its git source tags too). The
first run of each side (cold caches, imports) is reported apart and left out of the medians.

``--baseline PATH`` adds a third side: the same flowlake rounds run by the checkout at ``PATH``
(an older commit, e.g. ``git worktree add /tmp/base <commit>``) in a child process, alternating
with the other two, on its own lake and cache in the same project, so that a change is measured
against its parent under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import store
import tracking

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MLFLOW_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, time
    logging.disable(logging.WARNING)
    import mlflow
    runs, workdir = int(sys.argv[1]), sys.argv[2]
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("bench")
    times = []
    for i in range(runs):
        start = time.perf_counter()
        mlflow.start_run(run_name=f"empty-{i}")
        mlflow.end_run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"version": mlflow.__version__, "times": times}))
    """
)


def flowlake_round(
    lake: store.Lake, branch: str, runs: int, cache_dir: str, project: str
) -> tuple[list[float], str]:
    """``runs`` empty runs: their times, and the last one's id."""
    times = []
    run_id = ""
    for i in range(runs):
        start = time.perf_counter()
        run = tracking.start_run(
            lake, branch=branch, name=f"empty-{i}", code_dir=project, cache_dir=cache_dir
        )
        run.end()
        times.append(time.perf_counter() - start)
        run_id = run.id
    return times, run_id


def count_syncs(
    lake: store.Lake, branch: str, cache_dir: str, project: str, lake_dir: str
) -> dict[str, int]:
    """What one more empty run asks of the disk: fsync calls (objects' files and folders),
    the parallel waves they are issued in (each waits on the disk about once), SQLite write
    transactions (each one more fsync of SQLite's write-ahead log, not counted in ``fsyncs``)
    and the files it adds to the lake's folder at ``lake_dir`` (each a new inode: objects whose
    content the lake holds already add none); and the ``git`` processes it starts."""
    from store.backends.embedded.objects import ObjectStore
    from store.backends.embedded.refdb import RefDB

    counts = {"fsyncs": 0, "fsync_waves": 0, "sqlite_write_transactions": 0, "git_processes": 0}
    before = _files_under(lake_dir)
    real_popen = subprocess.Popen

    class Popen(real_popen):  # type: ignore[type-arg,valid-type,misc]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            counts["git_processes"] += int(isinstance(args, list) and args[:1] == ["git"])
            super().__init__(args, *rest, **kwargs)

    real_fsync, real_sync_all, real_write = os.fsync, ObjectStore._sync_all, RefDB.write

    def fsync(fd: Any) -> None:
        counts["fsyncs"] += 1
        real_fsync(fd)

    def sync_all(self: ObjectStore, paths: list[str]) -> None:
        counts["fsync_waves"] += 1
        real_sync_all(self, paths)

    def write(self: RefDB) -> Any:
        counts["sqlite_write_transactions"] += 1
        return real_write(self)

    os.fsync = fsync
    ObjectStore._sync_all = sync_all  # type: ignore[method-assign]
    RefDB.write = write  # type: ignore[method-assign]
    subprocess.Popen = Popen  # type: ignore[misc]
    try:
        flowlake_round(lake, branch, 1, cache_dir, project)
    finally:
        os.fsync = real_fsync
        ObjectStore._sync_all = real_sync_all  # type: ignore[method-assign]
        RefDB.write = real_write  # type: ignore[method-assign]
        subprocess.Popen = real_popen  # type: ignore[misc]
    counts["new_lake_files"] = _files_under(lake_dir) - before
    return counts


def _files_under(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


BASELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import store, tracking
    lake_dir, cache, project, runs = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    lake = store.open(lake_dir)
    try:
        branch = lake.get_branch("sweep").name
    except Exception:
        branch = lake.branch("sweep", source="main").name
    times = []
    for i in range(runs):
        start = time.perf_counter()
        tracking.start_run(
            lake, branch=branch, name=f"empty-{i}", code_dir=project, cache_dir=cache
        ).end()
        times.append(time.perf_counter() - start)
    print(json.dumps(times))
    """
)


def baseline_round(tree: str, runs: int, workdir: str, project: str) -> list[float]:
    """``runs`` empty runs by the flowlake checkout at ``tree``, in a child process (its first
    pays for imports and a cold cache on its first round)."""
    done = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, tree, f"{workdir}/lake", f"{workdir}/cache"]
        + [project, str(runs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        cwd=workdir,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _summary(times: list[float], cold: float) -> dict[str, Any]:
    return {
        "runs": len(times),
        "cold_first_run_ms": _ms(cold),
        "median_ms": _ms(statistics.median(times)),
        "mean_ms": _ms(statistics.fmean(times)),
        "p90_ms": _ms(statistics.quantiles(times, n=10)[-1]),
    }


def mlflow_round(python: str, runs: int, workdir: str, project: str) -> dict[str, Any]:
    """One MLflow process doing ``runs`` empty runs; its first pays for imports and setup."""
    done = subprocess.run(
        [python, "-c", MLFLOW_SCRIPT, str(runs), workdir],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        cwd=project,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs-per-round", type=int, default=10)
    parser.add_argument("--mlflow-python", default=None, help="python of a venv with mlflow")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--baseline", default=None, help="a flowlake checkout to compare with")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    flow: list[float] = []
    ml: list[float] = []
    base: list[float] = []
    base_cold = None
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        project = os.path.join(tmp, "project")
        subprocess.run(["git", "clone", "--quiet", REPO, project], check=True, timeout=300)
        lake = store.open(os.path.join(tmp, "lake"))
        branch = lake.branch("sweep", source="main").name
        cache_dir = os.path.join(tmp, "cache")  # starts empty: the first run pays for it
        cold = flowlake_round(lake, branch, 1, cache_dir, project)[0][0]
        mlflow_dir = os.path.join(tmp, "mlflow")
        os.makedirs(mlflow_dir)
        ml_cold = None
        base_dir = os.path.join(tmp, "baseline")
        os.makedirs(base_dir)
        for _ in range(args.rounds):
            times, last = flowlake_round(lake, branch, args.runs_per_round, cache_dir, project)
            flow += times
            if args.baseline:
                got = baseline_round(args.baseline, args.runs_per_round + 1, base_dir, project)
                if base_cold is None:
                    base_cold = got[0]
                base += got[1:]
            if args.mlflow_python:
                out = mlflow_round(args.mlflow_python, args.runs_per_round + 1, mlflow_dir, project)
                results["mlflow_version"] = out["version"]
                if ml_cold is None:
                    ml_cold = out["times"][0]
                ml += out["times"][1:]
        syncs = count_syncs(lake, branch, cache_dir, project, os.path.join(tmp, "lake"))
        events = tracking.sql(
            lake, "SELECT event FROM commits WHERE run_id = ?", params=[last]
        ).column("event")
        files = tracking.sql(
            lake, "SELECT count(*) AS n FROM code WHERE run_id = ?", params=[last]
        ).column("n")
        results["flowlake"] = {
            "runs": len(flow),
            "cold_first_run_ms": _ms(cold),
            "median_ms": _ms(statistics.median(flow)),
            "mean_ms": _ms(statistics.fmean(flow)),
            "p90_ms": _ms(statistics.quantiles(flow, n=10)[-1]),
            "commits_per_run": sorted(events.to_pylist()),
            "code_files_snapshotted": files[0].as_py(),
            "disk_per_run": syncs,
        }
        lake.close()
    print(json.dumps(results["flowlake"]), flush=True)
    if base:
        results["baseline"] = {"tree": args.baseline, **_summary(base, base_cold or 0.0)}
        results["flowlake_over_baseline_median"] = round(
            statistics.median(flow) / statistics.median(base), 3
        )
        print(json.dumps(results["baseline"]), flush=True)
    if ml:
        results["mlflow"] = _summary(ml, ml_cold or 0.0)
        if base:
            results["baseline_over_mlflow_median"] = round(
                statistics.median(base) / statistics.median(ml), 3
            )
        results["flowlake_over_mlflow_median"] = round(
            statistics.median(flow) / statistics.median(ml), 3
        )
        print(json.dumps(results["mlflow"]), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
