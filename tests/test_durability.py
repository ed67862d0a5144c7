"""Crash safety and multi-process concurrency of the embedded backend, with real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lake_worker import content

import store

WORKER = str(Path(__file__).with_name("lake_worker.py"))
pytestmark = pytest.mark.slow


def start(lake: Path, acks: Path, worker: str, mode: str, steps: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, str(lake), str(acks), worker, mode, str(steps)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        stderr=subprocess.PIPE,
    )


def acknowledged(acks: Path) -> list[dict]:
    if not acks.exists():
        return []
    lines = acks.read_text().splitlines()
    # The last line may be cut by the kill: only whole lines were acknowledged.
    return [json.loads(line) for line in lines if line.endswith("}")]


def check_promises(lake: store.Lake, records: list[dict], committed_only: bool) -> None:
    """Every acknowledged commit, merge and tag is there; acknowledged writes are readable."""
    heads = {b.name: b.head for b in lake.branches(all_namespaces=True)}
    reachable: dict[str, set[str]] = {}
    for record in records:
        if record["op"] in ("commit", "merge"):
            branch = record["branch"]
            if branch not in reachable:
                reachable[branch] = {c.id for c in lake.log(branch)}
            assert record["commit"] in reachable[branch], record
        elif record["op"] == "tag":
            assert lake.tags()[record["tag"]] == record["commit"]
        elif record["op"] == "write" and record["branch"] in heads and not committed_only:
            data = lake.read_bytes(record["path"], ref=record["branch"])
            worker = record["path"].split("/")[0]
            assert data == content(worker, record["step"], record["size"])


def wait_for_commits(acks: Path, workers: list[str], procs: list[subprocess.Popen]) -> None:
    """Until each worker has acknowledged a commit (or one of them has died)."""
    branches = {f"user:worker/{name}" for name in workers}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        done = {r["branch"] for r in acknowledged(acks) if r["op"] == "commit"}
        if branches <= done:
            return
        time.sleep(0.05)


def test_killed_processes_never_corrupt_the_lake_or_lose_commits(tmp_path: Path) -> None:
    rng = random.Random(1234)
    lake_path, acks = tmp_path / "lake", tmp_path / "acks.jsonl"
    store.open(lake_path).close()
    # A worker that does no step measures how long starting one takes on this machine (seconds
    # when the machine is busy), so that every round gives the workers time to work.
    began = time.monotonic()
    probe = start(lake_path, acks, "probe", "mixed", 0)
    assert probe.wait(timeout=120) == 0
    startup = time.monotonic() - began
    kills = 0
    for round_ in range(12):
        # Far more steps than fit in the time before the kill: every worker dies mid-work.
        names = [f"w{round_}x{i}" for i in range(2)]
        procs = [start(lake_path, acks, name, "mixed", 100_000) for name in names]
        if round_ % 2:
            # Every other round kills only once both workers have committed, so that a busy
            # machine (slow starts) still yields commits to check.
            wait_for_commits(acks, names, procs)
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            time.sleep(startup + rng.uniform(0.4, 2.0))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            _, err = proc.communicate()
            assert proc.returncode == -signal.SIGKILL, f"worker failed on its own: {err.decode()}"
        lake = store.open(lake_path)
        try:
            assert lake.fsck() == [], f"round {round_}"
            check_promises(lake, acknowledged(acks), committed_only=False)
        finally:
            lake.close()
    assert kills == 24
    records = acknowledged(acks)
    assert sum(r["op"] == "commit" for r in records) >= 10
    lake = store.open(lake_path)
    lake.gc(retention=__import__("datetime").timedelta(0))
    assert lake.fsck() == []
    check_promises(lake, records, committed_only=False)


def test_concurrent_committers_lose_nothing(tmp_path: Path) -> None:
    lake_path, acks = tmp_path / "lake", tmp_path / "acks.jsonl"
    store.open(lake_path).close()
    procs = [start(lake_path, acks, f"s{i}", "shared", 12) for i in range(3)]
    procs += [start(lake_path, acks, f"m{i}", "mixed", 12) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    lake = store.open(lake_path)
    records = acknowledged(acks)
    assert sum(r["op"] == "commit" for r in records) >= 30
    check_promises(lake, records, committed_only=False)
    shared = {o.path for o in lake.list(ref="user:worker/shared")}
    assert shared == {f"s{i}/{step}.bin" for i in range(3) for step in range(12)}
    assert lake.get_branch("user:worker/shared").uncommitted() == []
    assert lake.fsck() == []
