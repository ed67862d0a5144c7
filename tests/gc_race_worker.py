"""Processes for the gc race test: writers that deduplicate against fresh garbage, and gc.

``python gc_race_worker.py write LAKE ACKS NAME STEPS``: each step stores two new contents on
a scratch branch and resets it (so their blobs are garbage at once), then writes the first again
on the worker's own branch (the store deduplicates against the garbage blob) together with a
content never stored before, commits, and appends the commit to ACKS (fsynced) once the store
has returned. The second content stays garbage.

``python gc_race_worker.py gc LAKE STOP REPORT``: runs ``gc(retention=0)`` back to back until
the file STOP exists, then once more, and writes how many runs finished and how many objects
they removed.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import store


def content(name: str, step: int, kind: str) -> bytes:
    seed = f"{name}:{step}:{kind}:".encode()
    return (seed * (60_000 // len(seed) + 1))[:60_000]


def write(lake_path: str, acks_path: str, name: str, steps: int) -> None:
    lake = store.open(lake_path, namespace="user:racer")
    scratch = lake.branch(f"{name}-scratch", exist_ok=True)
    own = lake.branch(name, exist_ok=True)
    with open(acks_path, "a") as acks:
        for step in range(steps):
            reused = content(name, step, "reused")
            scratch.write_bytes("garbage.bin", reused)
            scratch.write_bytes("orphan.bin", content(name, step, "orphan"))
            scratch.reset()
            own.write_bytes(f"{step}/reused.bin", reused)
            own.write_bytes(f"{step}/new.bin", content(name, step, "new"))
            commit = own.commit(f"step {step}")
            acks.write(json.dumps({"branch": own.name, "step": step, "commit": commit.id}) + "\n")
            acks.flush()
            os.fsync(acks.fileno())


def collect(lake_path: str, stop_path: str, report_path: str) -> None:
    lake = store.open(lake_path, namespace="user:racer")
    runs = removed = 0
    while True:
        stopping = os.path.exists(stop_path)
        removed += lake.gc(retention=timedelta(0))
        runs += 1
        if stopping:  # a last run once the writers are done
            break
    with open(report_path, "w") as f:
        json.dump({"runs": runs, "removed": removed}, f)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        collect(sys.argv[2], sys.argv[3], sys.argv[4])
