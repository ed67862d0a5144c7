"""Faults found reviewing the day's changes to the embedded store and tracking."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import store
import tracking
from store.errors import RefsDatabaseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )


_FORKS_A_CHILD = """
    import multiprocessing, sys, store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch="main", name="parent", snapshot_code=False)
    child = multiprocessing.get_context("fork").Process(target=print)
    child.start()
    child.join()
    print(run.id, child.exitcode, flush=True)
    run.log_metric("loss", 0.5, step=0)
    run.end()
"""


def test_a_forked_child_that_finishes_leaves_the_parents_run_open(
    embedded_lake: store.Lake,
) -> None:
    location = embedded_lake.location
    proc = _python(_FORKS_A_CHILD, location)
    assert proc.returncode == 0, proc.stderr
    run_id, exitcode = proc.stdout.split()
    assert exitcode == "0"
    lake = store.open(location)
    assert tracking.get_run(lake, run_id).status == "finished"
    assert tracking.get_metric_history(lake, run_id, "loss").column("value").to_pylist() == [0.5]


_LOGS_FROM_A_THREAD = """
    import sys, threading, time, store, tracking
    lake = store.open(sys.argv[1])
    run = tracking.start_run(lake, branch="main", name="threaded", snapshot_code=False)

    def log() -> None:
        for step in range(10):
            time.sleep(0.02)
            run.log_metric("loss", 1.0 / (step + 1), step=step)

    threading.Thread(target=log).start()
    print(run.id, flush=True)
    # The main thread returns at once; the run is left open for the exit hook.
"""


def test_a_run_left_open_ends_only_after_the_programs_threads_finish_logging(
    embedded_lake: store.Lake,
) -> None:
    location = embedded_lake.location
    proc = _python(_LOGS_FROM_A_THREAD, location)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lake = store.open(location)
    run_id = proc.stdout.strip()
    assert tracking.get_run(lake, run_id).status == "finished"
    steps = tracking.get_metric_history(lake, run_id, "loss").column("step").to_pylist()
    assert steps == list(range(10))


def _damage_commit_record(path: Path, damage: Callable[[bytes], bytes]) -> str:
    """Commit twice on ``dev`` of a new lake at ``path``, then replace the first commit's
    record in its row (its only copy) with ``damage(record)``; returns that commit's id."""
    lake = store.open(path)
    dev = lake.branch("dev")
    first = dev.commit("first", writes={"a.txt": b"a"})
    dev.commit("second", writes={"b.txt": b"b"})
    lake.close()
    conn = sqlite3.connect(path / "refs.db")
    with conn:
        (record,) = conn.execute("SELECT record FROM commits WHERE id = ?", (first.id,)).fetchone()
        conn.execute("UPDATE commits SET record = ? WHERE id = ?", (damage(record), first.id))
    conn.close()
    return first.id


@pytest.mark.parametrize(
    "damage",
    [
        lambda _: b"not json",
        lambda _: b"",
        lambda _: b'{"message": "first"}',
        lambda _: b"[]",
        lambda record: record.replace(b'"first"', b'"forged"'),
    ],
    ids=["not-json", "empty", "fields-missing", "not-an-object", "altered"],
)
def test_a_damaged_commit_record_reads_as_a_refs_database_error_not_as_the_commit(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    commit_id = _damage_commit_record(tmp_path / "lake", damage)
    lake = store.open(tmp_path / "lake")
    with pytest.raises(RefsDatabaseError, match=commit_id):
        lake.commit(commit_id)
    with pytest.raises(RefsDatabaseError, match="flowlake fsck"):
        list(lake.log("dev"))
    assert any(commit_id in problem for problem in lake.fsck())
    lake.close()


@pytest.mark.parametrize("damaged", ["head", "middle"])
def test_fsck_walks_past_a_commit_row_with_damaged_columns_along_its_record(
    tmp_path: Path, damaged: str
) -> None:
    path = tmp_path / "lake"
    lake = store.open(path)
    dev = lake.branch("dev")
    first = dev.commit("first", writes={"big.bin": os.urandom(20_000)})
    middle = dev.commit("middle", writes={"big.bin": os.urandom(20_000)})
    head = dev.commit("head", writes={"other.txt": b"x"})
    old_blob = lake.locate("big.bin", first.id)
    lake.close()
    assert old_blob is not None
    os.remove(old_blob)  # held only by the first commit's tree
    target = head.id if damaged == "head" else middle.id
    conn = sqlite3.connect(path / "refs.db")
    with conn:
        conn.execute("UPDATE commits SET parents = 'not json' WHERE id = ?", (target,))
    conn.close()
    problems = store.open(path).fsck()
    assert any(target in p and "damaged" in p for p in problems), problems
    assert not any("points at missing commit" in p for p in problems), problems
    # The blob lost from a tree only reachable past the damaged row is reported too.
    assert any("big.bin" in p and "missing" in p for p in problems), problems
