"""Transaction scratch branches: hidden from listings and tracking views, reclaimed by gc once
the transaction's process is provably gone, never while it lives. Runs on every backend."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import LakeAccess
from typer.testing import CliRunner

import store
import tracking
from store import scratch

WORKER = str(Path(__file__).with_name("tx_worker.py"))


def all_names(lake: store.Lake, include_scratch: bool = False) -> set[str]:
    return {b.name for b in lake.branches(all_namespaces=True, include_scratch=include_scratch)}


@pytest.fixture
def worker(lake_access: LakeAccess) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A process inside a transaction on ``user:tester/exp`` (made by the test), and the name
    of its scratch branch."""
    proc = subprocess.Popen(
        [sys.executable, WORKER, lake_access.location, "user:tester/exp"],
        env={**os.environ, **lake_access.env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    yield proc, name
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def run_on_exp(lake: store.Lake) -> str:
    lake.branch("exp")
    with tracking.start_run(lake, branch="exp", name="r", snapshot_code=False) as run:
        run.log_metric("loss", 0.5, step=1)
    return run.id


@pytest.mark.parametrize("lake", ["embedded", "embedded-s3", "lakefs"], indirect=True)
def test_a_killed_transaction_is_hidden_and_gc_deletes_it_once_its_process_is_gone(
    lake: store.Lake, request: pytest.FixtureRequest
) -> None:
    run_id = run_on_exp(lake)
    proc, name = request.getfixturevalue("worker")
    assert scratch.is_scratch(name), name
    assert name in all_names(lake, include_scratch=True)
    # While its process lives the branch is never reclaimed, whatever the grace.
    assert lake.reclaim_transactions(timedelta(0)) == []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert name in all_names(lake, include_scratch=True)
    assert name not in all_names(lake) and name not in {b.name for b in lake.branches()}
    runs = tracking.sql(lake, "SELECT run_id, branch FROM runs").to_pylist()
    assert [r["run_id"] for r in runs] == [run_id], runs
    metrics = tracking.sql(lake, "SELECT run_id, value FROM metrics").to_pylist()
    assert metrics == [{"run_id": run_id, "value": 0.5}]
    assert len(tracking.search_runs(lake)) == 1
    # Too young for the grace period: kept.
    assert lake.reclaim_transactions(timedelta(hours=1)) == []
    (dropped,) = lake.reclaim_transactions(timedelta(0))
    assert dropped.name == name and dropped.owner is not None
    assert dropped.owner.pid == proc.pid
    assert name not in all_names(lake, include_scratch=True)
    assert lake.branches() == [b for b in lake.branches(include_scratch=True)]


@pytest.mark.parametrize("lake", ["embedded", "lakefs"], indirect=True)
def test_flowlake_gc_deletes_a_killed_transactions_branch_and_reports_it(
    lake: store.Lake, lake_access: LakeAccess, request: pytest.FixtureRequest
) -> None:
    from ui.cli import app

    lake.branch("exp")
    proc, name = request.getfixturevalue("worker")
    where = ["--lake", lake_access.location]

    def cli(*args: str) -> dict[str, object] | list[dict[str, object]]:
        result = CliRunner().invoke(app, [*args, "--json", *where])
        assert result.exit_code == 0, result.output
        parsed: dict[str, object] | list[dict[str, object]] = json.loads(result.stdout)
        return parsed

    listed = cli("branch", "list", "--all")
    assert isinstance(listed, list) and name not in {b["name"] for b in listed}
    kept = cli("gc", "--retention", "0")
    assert isinstance(kept, dict) and kept["scratch_branches_deleted"] == []
    proc.kill()
    proc.wait(timeout=30)
    shown = cli("branch", "list", "--all", "--include-scratch")
    assert isinstance(shown, list) and name in {b["name"] for b in shown}
    gc = cli("gc", "--retention", "0")
    assert isinstance(gc, dict) and gc["scratch_branches_deleted"] == [name]
    collects = "gc" in lake.backend.capabilities
    assert (gc["removed"] is None) == (not collects)  # lakeFS collects objects itself
    assert name not in all_names(lake, include_scratch=True)
    if collects:
        assert lake.fsck() == []


def test_a_live_transactions_branch_survives_gc_and_commits(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    with branch.transact("live") as tx:
        tx.write_bytes("a.txt", b"1")
        assert lake.reclaim_transactions(timedelta(0)) == []
        if "gc" in lake.backend.capabilities:
            lake.gc(timedelta(0), exclusive_objects=True)  # each test has its own bucket
        assert tx.name in all_names(lake, include_scratch=True)
        assert tx.name not in all_names(lake)
    assert branch.read_bytes("a.txt") == b"1"
    assert all_names(lake, include_scratch=True) == all_names(lake)


def owner_now() -> scratch.ScratchOwner:
    parsed = scratch.parse(scratch.new_short_name("exp"))
    assert parsed is not None and parsed.owner is not None
    return parsed.owner


def test_only_an_owner_provably_gone_on_this_host_is_abandoned() -> None:
    me = owner_now()
    assert me.pid == os.getpid() and abs(me.created - time.time()) < 5
    assert not scratch.abandoned(me, timedelta(0))
    # Another host (or process id namespace): its processes cannot be seen from here.
    elsewhere = dataclasses.replace(me, host="00000000", pid=2**22 + 1)
    assert not scratch.abandoned(elsewhere, timedelta(0))
    # This host rebooted since: every process of the old boot is gone.
    assert scratch.abandoned(dataclasses.replace(me, boot="00000000"), timedelta(0))
    # No process has the id.
    free = dataclasses.replace(me, pid=2**22 + 1)
    assert scratch.abandoned(free, timedelta(0))
    assert not scratch.abandoned(free, timedelta(hours=1))
    # The id belongs to a process (this one) started after the branch was made: reused.
    assert scratch.abandoned(
        dataclasses.replace(me, created=int(time.time()) - 10**6), timedelta(0)
    )


def test_scratch_names_fit_the_branch_limit_and_older_names_are_hidden_but_kept(
    lake: store.Lake,
) -> None:
    long = scratch.new_short_name("b" * 200)
    assert len(long) <= store.names.MAX_BRANCH and scratch.is_scratch(long)
    assert not scratch.is_scratch("exp-tx-notes") and not scratch.is_scratch("tx-0123456789ab")
    older = lake.branch("exp-tx-0123456789ab")  # the name form before owners were recorded
    assert older.name not in all_names(lake) and older.name in all_names(lake, include_scratch=True)
    assert scratch.parse(older.name) == scratch.ScratchBranch(older.name, None)
    assert lake.reclaim_transactions(timedelta(0)) == []
    assert older.name in all_names(lake, include_scratch=True)
