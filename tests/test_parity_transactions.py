"""Transactions leave the same lake behind on every backend (the ``lake`` fixture): what a
serializable transaction only read is not changed by it, whatever the backend does to guard it."""

from __future__ import annotations

from typing import Any

import pytest

import store


def _serializable_copy(branch: store.Branch, source: str, target: str) -> None:
    with branch.transact("copy", isolation="serializable") as tx:
        tx.write_bytes(target, tx.read_bytes(source))
        assert not tx.exists("absent")


def test_a_serializable_transaction_changes_only_what_it_wrote(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("x", b"0")
    before = branch.commit("x").id
    _serializable_copy(branch, "x", "y")
    assert [(c.path, str(c.kind)) for c in lake.diff(before, branch.name)] == [("y", "added")]
    assert branch.stat("x") == lake.stat("x", ref=before)
    assert branch.uncommitted() == []
    assert {b.name for b in lake.branches(include_scratch=True)} == {"main", branch.name}


def test_a_branch_that_changed_a_path_a_transaction_read_merges_cleanly(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("x", b"0")
    before = branch.commit("x").id
    other = lake.branch("other", source=before)
    other.write_bytes("x", b"1")
    other.commit("x=1")
    _serializable_copy(branch, "x", "y")
    lake.merge(other.name, into=branch.name)
    assert branch.read_bytes("x") == b"1" and branch.read_bytes("y") == b"0"


def test_a_serializable_transaction_still_fails_on_a_read_path_changed_meanwhile(
    lake: store.Lake,
) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("x", b"0")
    branch.commit("x")
    try:
        with branch.transact("copy", isolation="serializable") as tx:
            tx.write_bytes("y", tx.read_bytes("x"))
            with branch.transact("meanwhile") as other:
                other.write_bytes("x", b"1")
    except store.ConflictError as exc:
        assert exc.conflicts == ["x"]
    else:
        raise AssertionError("the transaction committed over a changed read")
    assert not branch.exists("y") and branch.read_bytes("x") == b"1"
    before_retry = branch.head().id
    _serializable_copy(branch, "x", "y")  # a retry commits, and leaves no trace either
    assert branch.read_bytes("y") == b"1"
    assert [(c.path, str(c.kind)) for c in lake.diff(before_retry, branch.name)] == [("y", "added")]


def test_every_branch_a_transaction_makes_is_a_hidden_scratch_branch(
    lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from store.names import listed_names
    from store.scratch import is_scratch

    inner: Any = lake.backend
    while hasattr(inner, "_inner"):  # the backend itself, under the error and policy views
        inner = inner._inner
    made: list[str] = []
    create = inner.create_branch

    def recording(name: str, source_commit: str) -> None:
        made.append(name)
        create(name, source_commit)

    monkeypatch.setattr(inner, "create_branch", recording)
    branch = lake.branch("exp")
    branch.write_bytes("x", b"0")
    branch.commit("x")
    made.clear()
    _serializable_copy(branch, "x", "y")
    assert made and all(is_scratch(listed_names(name)[0]) for name in made), made
    assert {b.name for b in lake.branches(include_scratch=True)} == {"main", branch.name}
