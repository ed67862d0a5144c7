"""Query time over many small metric parts before and after compaction in the lake.

Builds ``--runs`` finished runs, each flushing ``--parts`` metric parts of ``--points`` points,
merged into one branch; tags it ``before``; compacts every branch (the target and the run
branches, ``tracking.compact``). Then, alternating in rounds so load hits both sides alike, times
the leaderboard with an empty local index (``$FLOWLAKE_CACHE_DIR`` deleted first: what a new
machine, or any first query after new runs, pays to read the lake) at ``ref="before"`` (many
small parts) and at the compacted branch (one part per run): the same rows, read from different
objects. Also times it with the index warm, and a whole-lake live query cold before and after.

Run: ``.venv/bin/python -m benchmarks.bench_compaction [--backend embedded|lakefs]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEADERBOARD = (
    "SELECT r.name, max(m.value) AS best FROM runs r JOIN metrics m USING (run_id) "
    "WHERE m.key = 'acc' GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
)


@contextmanager
def _lake(backend: str, workdir: Path) -> Iterator[Any]:
    import store

    if backend == "embedded":
        lake = store.open(workdir / "lake")
        try:
            yield lake
        finally:
            lake.close()
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import lakefs_server

    server = lakefs_server.start_lakefs(workdir / "lakefs")
    try:
        lake = server.open_lake("bench-compaction")
        yield lake
        lake.close()
    finally:
        server.stop()


def _build(lake: Any, branch: str, runs: int, parts: int, points: int) -> None:
    import tracking

    for r in range(runs):
        with tracking.start_run(lake, branch=branch, name=f"r{r}", snapshot_code=False) as run:
            for p in range(parts):
                for i in range(points):
                    step = p * points + i
                    run.log_metric("acc", ((r * 7919 + step) % 1000) / 1000, step=step)
                run.flush()


def _cold(cache: str, fn: Callable[[], Any]) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _warm(fn: Callable[[], Any]) -> float:
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("embedded", "lakefs"), default="embedded")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--parts", type=int, default=30)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-compaction-"))
    cache = str(workdir / "cache")
    os.environ["FLOWLAKE_CACHE_DIR"] = cache
    os.environ.setdefault("FLOWLAKE_USER", "bench")
    import tracking

    try:
        with _lake(args.backend, workdir) as lake:
            exp = lake.branch("exp", source="main")
            start = time.perf_counter()
            _build(lake, exp.name, args.runs, args.parts, args.points)
            built = time.perf_counter() - start
            lake.tag("before", exp.name)
            live_before = [
                _cold(cache, lambda: tracking.sql(lake, LEADERBOARD)) for _ in range(args.rounds)
            ]
            start = time.perf_counter()
            done = tracking.compact(lake)
            compacted = time.perf_counter() - start
            live_after = [
                _cold(cache, lambda: tracking.sql(lake, LEADERBOARD)) for _ in range(args.rounds)
            ]
            old = lambda: tracking.sql(lake, LEADERBOARD, ref="before")  # noqa: E731
            new = lambda: tracking.sql(lake, LEADERBOARD, ref=exp.name)  # noqa: E731
            assert old().equals(new()), "compaction changed the leaderboard"
            cold_old, cold_new, warm_old, warm_new = [], [], [], []
            for _ in range(args.rounds):
                cold_old.append(_cold(cache, old))
                cold_new.append(_cold(cache, new))
                warm_old.append(_warm(old))
                warm_new.append(_warm(new))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return f"{sorted(values)[len(values) // 2] * 1000:.0f} ms"

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{sorted(a)[len(a) // 2] / sorted(b)[len(b) // 2]:.1f}x"

    parts = sum(c.parts for c in done)
    print(
        f"backend {args.backend}: {args.runs} runs x {args.parts} parts x {args.points} points "
        f"(built in {built:.0f} s); compact() replaced {parts} parts on {len(done)} branches "
        f"in {compacted:.1f} s"
    )
    print("| query (median of rounds) | many small parts | compacted | ratio |")
    print("|---|---|---|---|")
    print(
        f"| leaderboard at a ref, index empty | {ms(cold_old)} | {ms(cold_new)} | "
        f"{ratio(cold_old, cold_new)} faster |"
    )
    print(
        f"| leaderboard at a ref, index warm | {ms(warm_old)} | {ms(warm_new)} | "
        f"{ratio(warm_old, warm_new)} |"
    )
    print(
        f"| live leaderboard (every branch), index empty | {ms(live_before)} | {ms(live_after)} "
        f"| {ratio(live_before, live_after)} faster |"
    )


if __name__ == "__main__":
    main()
