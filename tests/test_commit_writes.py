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


def _combined(request: pytest.FixtureRequest) -> bool:
    """Whether the lake's backend commits and merges in one step (the embedded backend)."""
    return bool(request.node.callspec.params["lake"] != "lakefs")


def _target_and_work(lake: store.Lake) -> tuple[store.Branch, store.Branch]:
    dev = lake.branch("dev")
    dev.write_bytes("keep.txt", b"kept")
    dev.write_bytes("change.txt", b"before")
    dev.commit("base")
    work = lake.branch("work", source="dev")
    work.write_bytes("staged.txt", b"staged")
    return dev, work


def test_a_commit_merging_into_an_unmoved_branch_is_the_commit_then_its_merge(
    lake: store.Lake, request: pytest.FixtureRequest
) -> None:
    dev, work = _target_and_work(lake)
    dev_head = dev.head().id
    commit, merged = work.commit_merging(
        "finish",
        {"k": "v"},
        writes={"change.txt": b"after"},
        into="dev",
        merge_message="merge work",
        merge_metadata={"m": "1"},
    )
    if merged is None:  # no combined step: the merge follows as usual
        assert not _combined(request)
        assert dev.head().id == dev_head
        merged = lake.merge("work", into="dev", message="merge work", metadata={"m": "1"})
    else:
        assert _combined(request)
    assert work.head().id == commit.id and dev.head().id == merged.id
    assert merged.parents == (dev_head, commit.id)
    assert (merged.message, merged.metadata["m"]) == ("merge work", "1")
    assert lake.commit(commit.id).metadata["k"] == "v"
    assert {o.path: dev.read_bytes(o.path) for o in dev.list()} == {
        "change.txt": b"after",
        "keep.txt": b"kept",
        "staged.txt": b"staged",
    }
    assert work.uncommitted() == [] and dev.uncommitted() == []
    assert lake.merge_base("dev", "work") == commit.id


def test_a_commit_merging_into_a_moved_branch_commits_and_leaves_the_merge_to_merge(
    lake: store.Lake,
) -> None:
    dev, work = _target_and_work(lake)
    dev.write_bytes("keep.txt", b"moved on dev")
    moved = dev.commit("dev moved").id
    commit, merged = work.commit_merging("finish", writes={"change.txt": b"after"}, into="dev")
    assert merged is None
    assert work.head().id == commit.id and dev.head().id == moved
    lake.merge("work", into="dev")
    assert dev.read_bytes("keep.txt") == b"moved on dev"
    assert dev.read_bytes("change.txt") == b"after"


def test_a_commit_merging_into_a_dirty_branch_commits_and_the_merge_still_refuses(
    lake: store.Lake,
) -> None:
    dev, work = _target_and_work(lake)
    dev.write_bytes("uncommitted.txt", b"x")
    dev_head = dev.head().id
    commit, merged = work.commit_merging("finish", writes={"change.txt": b"after"}, into="dev")
    assert merged is None and work.head().id == commit.id and dev.head().id == dev_head
    with pytest.raises(errors.DirtyBranchError):
        lake.merge("work", into="dev")


def test_a_commit_merging_into_main_leaves_the_merge_to_the_gates(lake: store.Lake) -> None:
    work = lake.branch("work")
    main_head = lake.get_branch("main").head().id
    commit, merged = work.commit_merging("finish", writes={"a.txt": b"a"}, into="main")
    assert merged is None and lake.get_branch("main").head().id == main_head
    assert lake.merge("work", into="main").parents == (main_head, commit.id)


def test_a_commit_merging_with_nothing_to_commit_changes_neither_branch(
    lake: store.Lake,
) -> None:
    dev, work = _target_and_work(lake)
    work.commit("staged", writes={"change.txt": b"after"})
    heads = (dev.head().id, work.head().id)
    with pytest.raises(errors.NothingToCommitError):
        work.commit_merging("again", writes={"change.txt": b"after"}, into="dev")
    assert (dev.head().id, work.head().id) == heads
    with pytest.raises(errors.BranchNotFoundError):
        work.commit_merging("nowhere", writes={"b.txt": b"b"}, into="no-such-branch")
    assert work.head().id == heads[1]


def test_a_commit_merging_into_a_branch_the_perimeter_may_not_merge_into_still_commits(
    lake: store.Lake, lake_access: object
) -> None:
    from test_policy_enforce import install_policy, reopen

    install_policy(lake)
    production = reopen(lake_access, perimeter="production")
    staging = reopen(lake_access, perimeter="staging")
    try:
        hotfix = production.with_namespace("production").branch("hotfix")
        head = hotfix.head().id
        work = staging.branch("exp")
        commit, merged = work.commit_merging("train", writes={"model.bin": b"m"}, into=hotfix.name)
        assert merged is None and work.head().id == commit.id
        assert hotfix.head().id == head
        with pytest.raises(errors.PermissionDeniedError, match="may not merge into"):
            staging.merge(work.name, into=hotfix.name)
    finally:
        staging.close()
        production.close()


def test_a_branch_created_with_writes_holds_them_uncommitted(lake: store.Lake) -> None:
    main_head = lake.get_branch("main").head().id
    big = b"x" * 20_000
    branch = lake.branch("born", writes=[("a.txt", b"a"), ("big.bin", big)])
    assert branch.head().id == main_head
    assert sorted(c.path for c in branch.uncommitted()) == ["a.txt", "big.bin"]
    assert branch.read_bytes("big.bin") == big
    with pytest.raises(errors.AlreadyExistsError):
        lake.branch("born", writes=[("b.txt", b"b")])
    assert [c.path for c in branch.uncommitted()] == ["a.txt", "big.bin"]
    lake.branch("born", exist_ok=True, writes=[("b.txt", b"b")])
    assert branch.read_bytes("b.txt") == b"b"
    with pytest.raises(errors.InvalidArgumentError):
        lake.branch("never", writes=[("a.txt", "not bytes")])  # type: ignore[list-item]
    with pytest.raises(errors.InvalidPathError):
        lake.branch("never", writes=[("../up.txt", b"x")])
    with pytest.raises(errors.BranchNotFoundError):
        lake.get_branch("never")


def test_staged_rows_alone_are_read_in_the_order_a_sort_gives(
    embedded_lake: store.Lake,
) -> None:
    import pyarrow.compute as pc

    work = embedded_lake.branch("work")
    paths = ["z.txt", "Z.txt", "a-b", "a/b", "ä.txt", "a\U0001f600", "a\uffff", "é/x", "a.txt"]
    for path in paths:
        work.write_bytes(path, path.encode())
    work.write_bytes("a.txt", b"again")  # the newer staging of a path wins
    work.delete("z.txt")
    backend = embedded_lake.backend
    with backend.refs.read() as conn:  # type: ignore[attr-defined]
        (stored_name,) = conn.execute("SELECT DISTINCT branch FROM staging").fetchone()
    staged, _ = backend._staged_table(stored_name)  # type: ignore[attr-defined]
    got = staged.column("path").to_pylist()
    order = pc.sort_indices(staged, [("path", "ascending")])
    assert got == staged.take(order).column("path").to_pylist() == sorted(set(got))
    assert sorted(got) == sorted(paths)
    commit = work.commit("all")
    listed = sorted(o.path for o in work.list())
    assert listed == sorted(p for p in paths if p != "z.txt")
    assert work.head().id == commit.id and work.read_bytes("a.txt") == b"again"
    assert work.read_bytes("ä.txt") == "ä.txt".encode()


def test_the_last_write_of_a_path_wins_however_many_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import pyarrow as pa

    from store.backends.embedded import backend

    rng = random.Random(7)
    names = ["a", "a/b", "a-b", "ä", "Z", "z/\U0001f600", "é", "a\uffff"]
    paths = [rng.choice(names) for _ in range(40)]
    table = pa.table({"path": paths, "checksum": [f"{i:064x}" for i in range(len(paths))]})
    small = backend._last_write_wins(table)
    monkeypatch.setattr(backend, "SMALL_SORT_ROWS", 0)  # the Arrow sort of larger tables
    large = backend._last_write_wins(table)
    assert small.equals(large)
    last = {p: f"{i:064x}" for i, p in enumerate(paths)}
    assert small.column("path").to_pylist() == sorted(last)
    assert small.column("checksum").to_pylist() == [last[p] for p in sorted(last)]
