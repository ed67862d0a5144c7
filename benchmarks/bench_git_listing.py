"""The code snapshot's git listing cache, measured in place: the same code with the cache and
without it (both git commands started every time, as before ``tracking/gitlisting.py``), in
alternating rounds in one process, on an empty run and on a compute submit's code snapshot.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_git_listing

The project is a fresh clone of this repository's ``HEAD``; the rounds start once its listing is
cached (the clone's files and index must be older than the racy window first). Each side's
``git`` processes are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import store
import tracking
from compute.code import PendingSnapshot
from tracking import gitlisting, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    real_init, real_popen = snapshot.PendingListing.__init__, subprocess.Popen
    gits = {"cached": 0, "git": 0}
    side = ["cached"]

    class Popen(real_popen):  # type: ignore[type-arg,valid-type,misc]
        def __init__(self, argv: Any, *rest: Any, **kwargs: Any) -> None:
            gits[side[0]] += int(isinstance(argv, list) and argv[:1] == ["git"])
            super().__init__(argv, *rest, **kwargs)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-git-listing-") as tmp:
        project = os.path.join(tmp, "project")
        subprocess.run(["git", "clone", "--quiet", REPO, project], check=True, timeout=300)
        cache = os.path.join(tmp, "cache")
        os.environ["FLOWLAKE_CACHE_DIR"] = cache  # a submit's cache
        lake = store.open(os.path.join(tmp, "lake"))
        branch = lake.branch("sweep", source="main").name
        checkouts = Path(tmp) / "code"

        def run() -> None:
            tracking.start_run(lake, branch=branch, code_dir=project, cache_dir=cache).end()

        def submit_snapshot() -> None:
            PendingSnapshot(project).finish(checkouts)

        for _ in range(30):  # until the listing is cached
            run()
            submit_snapshot()
            if gitlisting.load(cache, project, ".") is not None:
                break
            time.sleep(1)
        subprocess.Popen = Popen  # type: ignore[misc,assignment]
        try:
            for name, work in (("empty_run", run), ("submit_snapshot", submit_snapshot)):
                results[name] = _alternate(work, args.rounds, args.per_round, side, gits)
                results[name]["load_average"] = [round(x, 2) for x in os.getloadavg()]
        finally:
            subprocess.Popen = real_popen  # type: ignore[misc]
            snapshot.PendingListing.__init__ = real_init  # type: ignore[method-assign]
        lake.close()
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _alternate(
    work: Callable[[], None], rounds: int, per_round: int, side: list[str], gits: dict[str, int]
) -> dict[str, Any]:
    real_init = snapshot.PendingListing.__init__
    times: dict[str, list[float]] = {"cached": [], "git": []}
    gits.update(cached=0, git=0)

    def without_cache(self: snapshot.PendingListing, root: Any = None, **_: Any) -> None:
        real_init(self, root)

    for _ in range(rounds):
        for name in ("cached", "git"):
            side[0] = name
            snapshot.PendingListing.__init__ = (  # type: ignore[method-assign]
                real_init if name == "cached" else without_cache
            )
            for _ in range(per_round):
                start = time.perf_counter()
                work()
                times[name].append(time.perf_counter() - start)
    snapshot.PendingListing.__init__ = real_init  # type: ignore[method-assign]
    out: dict[str, Any] = {}
    for name, values in times.items():
        out[name] = {
            "median_ms": round(statistics.median(values) * 1000, 2),
            "p90_ms": round(statistics.quantiles(values, n=10)[-1] * 1000, 2),
            "git_processes_per_call": gits[name] / len(values),
        }
    out["cached_over_git_median"] = round(out["cached"]["median_ms"] / out["git"]["median_ms"], 3)
    return out


if __name__ == "__main__":
    main()
