"""gc beside live writers, with real processes: no acknowledged commit may lose a byte.

The writers deduplicate against blobs that became garbage a moment before, and gc runs back to
back with retention 0, the interleaving that lost committed files before gc and writers shared
a lock (see ``store/backends/embedded/gclock.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from gc_race_worker import content

import store
from store.backends.embedded import layout

WORKER = str(Path(__file__).with_name("gc_race_worker.py"))
WRITERS = 2
STEPS = 12
pytestmark = pytest.mark.slow


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        stderr=subprocess.PIPE,
    )


def test_gc_with_zero_retention_beside_deduplicating_writers_loses_nothing(
    tmp_path: Path,
) -> None:
    lake_path, acks = tmp_path / "lake", tmp_path / "acks.jsonl"
    stop, report = tmp_path / "stop", tmp_path / "gc.json"
    store.open(lake_path).close()
    collector = spawn("gc", str(lake_path), str(stop), str(report))
    writers = [
        spawn("write", str(lake_path), str(acks), f"w{i}", str(STEPS)) for i in range(WRITERS)
    ]
    try:
        for proc in writers:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()
    finally:
        stop.touch()
        _, err = collector.communicate(timeout=300)
    assert collector.returncode == 0, f"gc failed beside writers: {err.decode()}"
    gc_runs = json.loads(report.read_text())
    assert gc_runs["runs"] >= 2 and gc_runs["removed"] > 0, gc_runs

    records = [json.loads(line) for line in acks.read_text().splitlines()]
    assert len(records) == WRITERS * STEPS
    lake = store.open(lake_path)
    try:
        lost = []
        for record in records:
            name = record["branch"].rsplit("/", 1)[1]
            for kind in ("reused", "new"):
                path = f"{record['step']}/{kind}.bin"
                try:
                    data = lake.read_bytes(path, ref=record["commit"])
                except store.errors.StoreError as exc:
                    lost.append(f"{path} of {record['commit'][:12]}: {exc}")
                    continue
                if data != content(name, record["step"], kind):
                    lost.append(f"{path} of {record['commit'][:12]}: wrong bytes")
        assert lost == [], f"{len(lost)} of {2 * len(records)} acknowledged files lost"
        assert lake.fsck() == []
        lake.gc(retention=timedelta(0))
        assert lake.fsck() == []
        orphans = [
            layout.address(layout.content_id(content(f"w{i}", step, "orphan")), codec)
            for i in range(WRITERS)
            for step in range(STEPS)
            for codec in layout.CODECS
        ]
        assert not any(lake.backend.objects.exists(addr) for addr in orphans)
    finally:
        lake.close()
