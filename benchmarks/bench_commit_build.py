"""Building a commit of N staged entries: this checkout against another one, side by side.

Each trial is a fresh process that opens a new embedded lake, stages N entries of 8 bytes with
``put_many`` in batches of 10,000 and commits them, timing both phases. Trials of the two
checkouts alternate, so drift on a noisy machine hits both alike; the ratio of medians is the
result.

    git worktree add /tmp/flowlake-base <commit>
    .venv/bin/python -m benchmarks.bench_commit_build --baseline /tmp/flowlake-base \
        --entries 1000000

``--baseline`` may be omitted to time this checkout alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parents[1]

TRIAL = r"""
import json, sys, time
import store
n = int(sys.argv[1])
lake = store.open(sys.argv[2], namespace="user:bench")
branch = lake.branch("src", source="main")
start = time.perf_counter()
for first in range(0, n, 10_000):
    lake.backend.put_many(
        branch.backend_name,
        [(f"data/{i // 1000:05d}/{i:07d}.bin", i.to_bytes(8, "little"))
         for i in range(first, min(n, first + 10_000))],
    )
staged = time.perf_counter()
branch.commit(f"{n} entries")
done = time.perf_counter()
assert lake.read_bytes(f"data/{(n - 1) // 1000:05d}/{n - 1:07d}.bin", ref=branch.name) == (
    (n - 1).to_bytes(8, "little")
)
print(json.dumps({"stage": staged - start, "commit": done - staged}))
"""


def trial(source: Path, entries: int) -> dict[str, float]:
    """One build in a fresh process importing flowlake from ``source``."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(source)}
        out = subprocess.run(
            [sys.executable, "-c", TRIAL, str(entries), f"{folder}/lake"],
            env=env,
            cwd=folder,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another flowlake checkout to compare")
    args = parser.parse_args()
    sources = {"this checkout": HERE}
    if args.baseline is not None:
        sources["baseline"] = args.baseline.resolve()
    times: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for number in range(args.trials):
        for name, source in sources.items():
            result = trial(source, args.entries)
            times[name].append(result)
            total = result["stage"] + result["commit"]
            print(
                f"trial {number + 1} {name}: stage {result['stage']:.1f} s, "
                f"commit {result['commit']:.1f} s, total {total:.1f} s",
                flush=True,
            )
    medians = {
        name: {phase: median(r[phase] for r in rows) for phase in ("stage", "commit")}
        for name, rows in times.items()
    }
    for name, m in medians.items():
        print(
            f"median {name}: stage {m['stage']:.1f} s + commit {m['commit']:.1f} s "
            f"= {m['stage'] + m['commit']:.1f} s for {args.entries:,} entries"
        )
    if "baseline" in medians:
        new, old = medians["this checkout"], medians["baseline"]
        print(
            f"baseline / this checkout: total {sum(old.values()) / sum(new.values()):.2f}x, "
            f"stage {old['stage'] / new['stage']:.2f}x, commit {old['commit'] / new['commit']:.2f}x"
        )


if __name__ == "__main__":
    main()
