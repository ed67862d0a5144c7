"""``Branch.commit(writes=)``: objects written and committed with the staged changes, on every
backend (the embedded backend in one durable step; crash safety: tests/test_durability.py)."""

from __future__ import annotations

import pytest

import store
from store import errors


def test_writes_are_committed_with_the_staged_changes(lake: store.Lake) -> None:
    work = lake.branch("work")
    work.write_bytes("staged.txt", b"staged")
    big = b"0123456789" * 20_000
    commit = work.commit("both", {"k": "v"}, writes={"written.txt": b"written", "big.bin": big})

    assert work.head().id == commit.id
    assert work.uncommitted() == []
    assert sorted(o.path for o in work.list()) == ["big.bin", "staged.txt", "written.txt"]
    at_commit = lake.get_branch("work")
    assert at_commit.read_bytes("written.txt") == b"written"
    assert at_commit.read_bytes("big.bin") == big
    assert at_commit.read_bytes("staged.txt") == b"staged"
    assert lake.commit(commit.id).metadata["k"] == "v"


def test_a_write_replaces_a_staged_change_of_the_same_path(lake: store.Lake) -> None:
    work = lake.branch("work")
    work.write_bytes("a.txt", b"staged")
    work.write_bytes("gone.txt", b"x")
    work.commit("base")
    work.delete("gone.txt")
    work.write_bytes("a.txt", b"staged again")
    work.commit("over", writes={"a.txt": b"written", "gone.txt": b"back"})

    assert work.read_bytes("a.txt") == b"written"
    assert work.read_bytes("gone.txt") == b"back"
    assert work.uncommitted() == []


def test_writes_that_change_nothing_have_nothing_to_commit(lake: store.Lake) -> None:
    work = lake.branch("work")
    head = work.commit("base", writes={"a.txt": b"same"}).id
    with pytest.raises(errors.NothingToCommitError):
        work.commit("again", writes={"a.txt": b"same"})
    assert work.head().id == head


@pytest.mark.parametrize(
    ("writes", "error"),
    [
        ({"../escape.txt": b"x"}, errors.InvalidPathError),
        ({"ok.txt": "not bytes"}, errors.InvalidArgumentError),
    ],
)
def test_a_bad_write_commits_and_writes_nothing(
    lake: store.Lake, writes: dict[str, bytes], error: type[Exception]
) -> None:
    work = lake.branch("work")
    work.write_bytes("staged.txt", b"staged")
    head = work.head().id
    with pytest.raises(error):
        work.commit("bad", writes={"first.txt": b"fine", **writes})
    assert work.head().id == head
    assert [c.path for c in work.uncommitted()] == ["staged.txt"]


def test_a_commit_that_writes_is_checked_as_a_commit_and_records_the_perimeter(
    lake: store.Lake, lake_access: object
) -> None:
    from test_policy_enforce import install_policy, reopen

    from store.policy.enforce import META_PERIMETER

    install_policy(lake)
    staging = reopen(lake_access, perimeter="staging")
    production = reopen(lake_access, perimeter="production")
    try:
        commit = staging.branch("exp").commit("train", writes={"model.bin": b"m"})
        assert commit.metadata[META_PERIMETER] == "staging"
        hotfix = production.with_namespace("production").branch("hotfix")
        head = hotfix.head().id
        foreign = staging.with_namespace("production").get_branch("hotfix")
        with pytest.raises(errors.PermissionDeniedError, match="may not commit to"):
            foreign.commit("sneak in", writes={"model.bin": b"not allowed"})
        assert hotfix.head().id == head
        assert hotfix.uncommitted() == []
    finally:
        staging.close()
        production.close()


def test_hundreds_of_writes_are_committed_as_a_batch(lake: store.Lake) -> None:
    work = lake.branch("work")
    work.write_bytes("staged.txt", b"staged")
    writes = {f"many/{i:03}.txt": f"item {i}".encode() for i in range(300)}
    work.commit("many", writes=writes)

    assert work.uncommitted() == []
    assert len(work.list("many/")) == 300
    assert work.read_bytes("many/123.txt") == b"item 123"
    assert work.read_bytes("staged.txt") == b"staged"
