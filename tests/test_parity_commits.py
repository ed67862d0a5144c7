"""Commits, tags and their names read and are refused alike on every backend (``lake`` fixture)."""

from __future__ import annotations

import pytest

import store
from store import errors


def _committed(lake: store.Lake, name: str, files: dict[str, bytes], source: str = "main"):
    branch = lake.branch(name, source=source)
    for path, data in files.items():
        branch.write_bytes(path, data)
    branch.commit(f"write {sorted(files)}")
    return branch


def test_reserved_metadata_keys_are_refused_on_every_backend(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a", b"1")
    for key in ["flowlake.committer", "flowlake.x", ".lakefs.merge.strategy"]:
        with pytest.raises(errors.InvalidArgumentError, match=rf"\['{key}'\] use a reserved"):
            branch.commit("m", metadata={key: "v"})
    assert branch.log() == lake.log("main") and branch.uncommitted() != []
    branch.commit("m", metadata={"lakefs.ok": "v", "flowlake": "v"})  # only the prefixes


def test_reserved_metadata_keys_are_refused_for_merges_and_before_a_transaction(
    lake: store.Lake,
) -> None:
    feature = _committed(lake, "feature", {"a": b"1"})
    with pytest.raises(errors.InvalidArgumentError, match="reserved prefix"):
        lake.merge(feature.name, into="main", metadata={"flowlake.gate": "x"})
    assert lake.list("main") == []
    with (
        pytest.raises(errors.InvalidArgumentError, match="reserved prefix"),
        feature.transact("t", metadata={".lakefs.x": "1"}) as tx,
    ):
        tx.write_bytes("b", b"never")  # pragma: no cover - refused before the block runs
    assert not feature.exists("b")
    assert {b.name for b in lake.branches(include_scratch=True)} == {"main", feature.name}


def test_the_first_commit_is_made_by_flowlake(lake: store.Lake) -> None:
    [first] = lake.log("main")
    assert (first.message, first.committer, first.parents) == ("Repository created", "flowlake", ())


def test_a_tag_may_not_end_with_dot_lock(lake: store.Lake) -> None:
    with pytest.raises(errors.InvalidNameError, match=r"may not end with '\.lock'"):
        lake.tag("release.lock", "main")
    assert lake.tags() == {}
    lake.tag("release.locked", "main")
    lake.tag("v1.lock.2", "main")
    assert sorted(lake.tags()) == ["release.locked", "v1.lock.2"]


def test_tag_errors_name_the_tag(lake: store.Lake) -> None:
    lake.tag("v1", "main")
    with pytest.raises(errors.AlreadyExistsError, match=r"^tag 'v1' already exists$"):
        lake.tag("v1", "main")
    with pytest.raises(errors.RefNotFoundError, match=r"^tag 'v2' does not exist$"):
        lake.delete_tag("v2")


def test_merge_and_revert_conflicts_are_worded_alike(lake: store.Lake) -> None:
    base = _committed(lake, "base", {"a": b"0"})
    left = _committed(lake, "left", {"a": b"L"}, source=base.name)
    _committed(lake, "right", {"a": b"R"}, source=base.name)
    with pytest.raises(errors.ConflictError) as info:
        lake.merge("right", into=left.name)
    assert str(info.value) == f"merging right into {left.name} conflicts: a"
    bad = left.head().id
    left.write_bytes("a", b"later")
    left.commit("later")
    with pytest.raises(errors.ConflictError) as info:
        lake.revert(left.name, bad)
    assert str(info.value) == f"reverting {bad} on {left.name} conflicts: a"


def test_nothing_to_merge_or_revert_is_worded_alike(lake: store.Lake) -> None:
    feature = _committed(lake, "feature", {"a": b"1"})
    with pytest.raises(errors.NothingToCommitError) as info:
        lake.merge("main", into=feature.name)
    assert str(info.value) == f"'main' has nothing to merge into '{feature.name}'"
    root = lake.resolve("main")
    with pytest.raises(errors.NothingToCommitError) as info:
        lake.revert(feature.name, root)
    assert str(info.value) == f"commit {root} changed nothing to revert"
    feature.write_bytes("a", b"1")
    with pytest.raises(errors.NothingToCommitError) as info:
        feature.commit("same bytes")
    assert str(info.value) == f"branch '{feature.name}' has no uncommitted changes"
