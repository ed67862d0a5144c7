"""Transactions: all or nothing, and what each isolation promises against concurrent commits.

``"merge"`` (the default) takes two identical changes as agreement; ``"serializable"`` fails
when anything the transaction read changed on the branch since it began, and
``run_transaction`` retries the caller's function then. Every test runs on each backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import LakeAccess

import store
from store.errors import ConflictError, InvalidArgumentError

WORKER = str(Path(__file__).with_name("lake_worker.py"))


def counter_branch(lake: store.Lake, **files: bytes) -> store.Branch:
    branch = lake.branch("counter")
    branch.write_many([("counter.txt", b"0"), *files.items()])
    branch.commit("start")
    return branch


def leftovers(lake: store.Lake) -> list[str]:
    """Scratch or guard branches a transaction left behind (there must be none)."""
    names = [b.name for b in lake.branches(all_namespaces=True, include_scratch=True)]
    return [n for n in names if "-tx-" in n or "-guard-" in n]


def commit_meanwhile(branch: store.Branch, path: str, data: bytes) -> None:
    """Another writer's commit on ``branch`` while a transaction is open."""
    branch.write_bytes(path, data)
    branch.commit(f"meanwhile: {path}")


def test_serializable_fails_when_a_path_it_read_changed_even_to_the_value_it_wrote(
    lake: store.Lake,
) -> None:
    branch = counter_branch(lake)
    with (
        pytest.raises(ConflictError) as raised,
        branch.transact("+1", isolation="serializable") as tx,
    ):
        value = int(tx.read_bytes("counter.txt"))
        tx.write_bytes("counter.txt", str(value + 1).encode())
        commit_meanwhile(branch, "counter.txt", b"1")
    assert raised.value.conflicts == ["counter.txt"]
    assert branch.read_bytes("counter.txt") == b"1"
    assert branch.head().message == "meanwhile: counter.txt"
    assert leftovers(lake) == []


def test_default_merge_isolation_takes_identical_writes_as_agreement(lake: store.Lake) -> None:
    branch = counter_branch(lake)
    with branch.transact("+1") as tx:
        value = int(tx.read_bytes("counter.txt"))
        tx.write_bytes("counter.txt", str(value + 1).encode())
        commit_meanwhile(branch, "counter.txt", b"1")
    assert branch.read_bytes("counter.txt") == b"1"  # two increments, one kept: as documented
    assert branch.head().message == "+1"


def test_serializable_fails_when_a_path_it_only_read_changed(lake: store.Lake) -> None:
    branch = counter_branch(lake, **{"limit.txt": b"10"})
    with (
        pytest.raises(ConflictError) as raised,
        branch.transact("spend", isolation="serializable") as tx,
    ):
        limit = int(tx.read_bytes("limit.txt"))
        tx.write_bytes("spent.txt", str(limit).encode())
        commit_meanwhile(branch, "limit.txt", b"5")
    assert raised.value.conflicts == ["limit.txt"]
    assert not branch.exists("spent.txt")


def test_serializable_fails_when_a_path_it_found_missing_appeared(lake: store.Lake) -> None:
    branch = counter_branch(lake)
    with (
        pytest.raises(ConflictError) as raised,
        branch.transact("claim", isolation="serializable") as tx,
    ):
        assert not tx.exists("lock")
        tx.write_bytes("claimed.txt", b"me")
        commit_meanwhile(branch, "lock", b"someone else")
    assert raised.value.conflicts == ["lock"]
    assert not branch.exists("claimed.txt")


def test_serializable_ignores_commits_to_paths_it_did_not_read(lake: store.Lake) -> None:
    branch = counter_branch(lake, **{"other.txt": b"a"})
    with branch.transact("+1", isolation="serializable") as tx:
        tx.write_bytes("counter.txt", str(int(tx.read_bytes("counter.txt")) + 1).encode())
        commit_meanwhile(branch, "other.txt", b"b")
    assert branch.read_bytes("counter.txt") == b"1"
    assert branch.read_bytes("other.txt") == b"b"
    assert branch.head().message == "+1"


def test_run_transaction_reruns_the_function_on_the_new_head(lake: store.Lake) -> None:
    branch = counter_branch(lake)
    seen: list[int] = []

    def increment(tx: store.Branch) -> int:
        value = int(tx.read_bytes("counter.txt"))
        seen.append(value)
        tx.write_bytes("counter.txt", str(value + 1).encode())
        if len(seen) == 1:
            commit_meanwhile(branch, "counter.txt", b"5")
        return value + 1

    assert branch.run_transaction(increment, "+1") == 6
    assert seen == [0, 5]
    assert branch.read_bytes("counter.txt") == b"6"


def test_run_transaction_gives_up_after_its_retries(lake: store.Lake) -> None:
    branch = counter_branch(lake)
    calls: list[int] = []

    def always_raced(tx: store.Branch) -> None:
        calls.append(1)
        tx.write_bytes("counter.txt", tx.read_bytes("counter.txt") + b"!")
        commit_meanwhile(branch, "counter.txt", str(len(calls)).encode())

    with pytest.raises(ConflictError):
        branch.run_transaction(always_raced, "+!", retries=2)
    assert len(calls) == 3
    assert branch.read_bytes("counter.txt") == b"3"


def test_transaction_arguments_are_checked_before_anything_happens(lake: store.Lake) -> None:
    branch = counter_branch(lake)
    before = {b.name for b in lake.branches()}
    with (
        pytest.raises(InvalidArgumentError, match="isolation"),
        branch.transact("x", isolation="snapshot"),
    ):  # type: ignore[arg-type]
        pass
    with pytest.raises(InvalidArgumentError, match="retries"):
        branch.run_transaction(lambda tx: None, "x", retries=-1)
    assert {b.name for b in lake.branches()} == before


@pytest.mark.parametrize("lake", ["embedded", "lakefs"], indirect=True)
def test_counter_incremented_by_processes_loses_nothing(
    lake: store.Lake, lake_access: LakeAccess, tmp_path: Path
) -> None:
    workers, steps = 4, 10
    counter_branch(lake.with_namespace("user:worker"))
    acks = tmp_path / "acks.jsonl"
    env = {**os.environ, **lake_access.env}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                lake_access.location,
                str(acks),
                f"w{i}",
                "counter",
                str(steps),
            ],
            env=env,
        )
        for i in range(workers)
    ]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    values = sorted(json.loads(line)["value"] for line in acks.read_text().splitlines())
    assert values == list(range(1, workers * steps + 1))
    branch = lake.with_namespace("user:worker").get_branch("counter")
    assert branch.read_bytes("counter.txt") == str(workers * steps).encode()
    assert leftovers(lake) == []


@pytest.mark.parametrize("path", ["counter.txt", "limit.txt"])
def test_lakefs_guard_holds_when_a_commit_lands_between_the_check_and_the_merge(
    lakefs_server: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """lakeFS has no compare-and-swap on a head: the guard must hold inside its merge."""
    lake = lakefs_server.open_lake(f"t-{uuid.uuid4().hex[:12]}")
    branch = counter_branch(lake, **{"limit.txt": b"10"})
    # the lakeFS backend itself, under the error view and the policy view
    inner = lake.backend._inner._inner  # type: ignore[attr-defined]
    create_branch = inner.create_branch

    def create_then_race(name: str, source_commit: str) -> None:
        create_branch(name, source_commit)
        if "-guard-" in name:  # after the check, before lakeFS's merge
            commit_meanwhile(branch, path, b"1")

    monkeypatch.setattr(inner, "create_branch", create_then_race)
    with (
        pytest.raises(ConflictError) as raised,
        branch.transact("+1", isolation="serializable") as tx,
    ):
        value = int(tx.read_bytes("counter.txt")) + int(tx.read_bytes("limit.txt")) * 0
        tx.write_bytes("counter.txt", str(value + 1).encode())
    assert raised.value.conflicts == [path]
    assert branch.head().message == f"meanwhile: {path}"
    assert branch.read_bytes("counter.txt") == (b"1" if path == "counter.txt" else b"0")
    assert leftovers(lake) == []
    lake.close()
