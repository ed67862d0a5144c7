"""The embedded backend's merge into a destination that has not moved since the merge base.

It reuses the source's tree instead of rewriting ranges; these tests compare it with the
three-way merge on the same inputs.
"""

from __future__ import annotations

from typing import Any

import pytest

import store
from store import errors
from store.backends.embedded.tree import Entry


def _entries(backend: Any, tree: str) -> list[Entry]:
    return list(backend.trees.iter_entries(tree))


def _three_way_entries(backend: Any, base: str, source: str, dest: str) -> list[Entry]:
    """What the three-way merge (the path taken when the destination moved) yields."""
    row = backend._commit_row
    base_tree, source_tree, dest_tree = row(base).tree, row(source).tree, row(dest).tree
    changes, _ = backend._three_way(base_tree, source_tree, dest_tree, None)
    with backend.lock.writing(), backend.objects.batch():
        tree = backend.trees.apply(dest_tree, changes)
    return _entries(backend, tree)


@pytest.fixture
def lake_with_dev(embedded_lake: store.Lake) -> store.Lake:
    dev = embedded_lake.branch("dev")
    dev.write_bytes("keep.txt", b"kept")
    dev.write_bytes("change.txt", b"before")
    dev.write_bytes("remove.txt", b"removed on the source")
    dev.write_bytes("same.txt", b"rewritten with the same bytes")
    dev.commit("base")
    return embedded_lake


def test_merge_into_an_unmoved_branch_reuses_the_three_way_result_with_both_parents(
    lake_with_dev: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = lake_with_dev
    backend = lake.backend
    base = lake.get_branch("dev").head().id
    work = lake.branch("work", source="dev")
    work.write_bytes("change.txt", b"after")
    work.write_bytes("added/new.bin", b"\x00" * 5000)
    work.delete("remove.txt")
    source = work.commit("work").id

    expected = _three_way_entries(backend, base, source, base)

    def no_range_rewrite(*args: object) -> str:
        raise AssertionError("the merge rewrote ranges")

    monkeypatch.setattr(backend.trees, "apply", no_range_rewrite)
    monkeypatch.setattr(backend.trees, "apply_table", no_range_rewrite)
    merged = lake.merge("work", into="dev")
    monkeypatch.undo()

    assert merged.parents == (base, source)
    merged_tree = backend._commit_row(merged.id).tree
    assert merged_tree == backend._commit_row(source).tree
    assert _entries(backend, merged_tree) == expected
    assert lake.get_branch("dev").read_bytes("change.txt") == b"after"
    assert not any(p.path == "remove.txt" for p in lake.get_branch("dev").list())
    assert lake.merge_base("dev", "work") == source
    assert backend.fsck() == []


def test_an_entry_changed_only_outside_its_content_merges_as_the_three_way_merge_does(
    lake_with_dev: store.Lake,
) -> None:
    lake = lake_with_dev
    backend = lake.backend
    dev = lake.get_branch("dev")
    base = dev.head().id
    work = lake.branch("work", source="dev")
    work.write_bytes("change.txt", b"after")
    changed = work.commit("work").id
    # Commits drop a rewrite with the same bytes; other histories can still bring one, so the
    # source commit here is written by hand with the same bytes under a newer time.
    old = backend.trees.get(backend._commit_row(base).tree, "same.txt")
    assert old is not None
    newer = Entry(old.path, old.checksum, old.size, old.mtime_ns + 1, old.address, old.inline)
    with backend.lock.writing():
        with backend.objects.batch():
            tree = backend.trees.apply(backend._commit_row(changed).tree, {"same.txt": newer})
            row = backend._write_commit(tree, (changed,), "newer time", {}, "tester")
        assert backend._advance(work.backend_name, changed, row)
    source = row.id
    assert backend.trees.get(backend._commit_row(source).tree, "same.txt") == newer

    expected = _three_way_entries(backend, base, source, base)
    merged = lake.merge("work", into="dev")

    assert merged.parents == (base, source)
    assert _entries(backend, backend._commit_row(merged.id).tree) == expected
    assert backend.trees.get(backend._commit_row(merged.id).tree, "same.txt") == old


def test_a_source_with_nothing_new_for_an_unmoved_branch_has_nothing_to_merge(
    lake_with_dev: store.Lake,
) -> None:
    lake = lake_with_dev
    work = lake.branch("work", source="dev")
    work.write_bytes("tmp.txt", b"x")
    work.commit("add")
    work.delete("tmp.txt")
    work.commit("remove")
    with pytest.raises(errors.NothingToCommitError):
        lake.merge("work", into="dev")


def test_merge_into_a_moved_branch_still_merges_three_ways(lake_with_dev: store.Lake) -> None:
    lake = lake_with_dev
    backend = lake.backend
    dev = lake.get_branch("dev")
    work = lake.branch("work", source="dev")
    work.write_bytes("change.txt", b"after")
    source = work.commit("work").id
    dev.write_bytes("keep.txt", b"moved on dev")
    dest = dev.commit("dev moved").id
    base = lake.merge_base("dev", "work")
    assert base is not None

    expected = _three_way_entries(backend, base, source, dest)
    merged = lake.merge("work", into="dev")

    assert merged.parents == (dest, source)
    assert _entries(backend, backend._commit_row(merged.id).tree) == expected
    assert dev.read_bytes("keep.txt") == b"moved on dev"
    assert dev.read_bytes("change.txt") == b"after"


def _python_comparison(backend: Any, left: str, right: str) -> tuple[bool, bool]:
    """(changed, only_content) computed entry by entry over the whole trees."""
    old = {e.path: e for e in _entries(backend, left)}
    new = {e.path: e for e in _entries(backend, right)}
    changed = old.keys() != new.keys() or any(old[p].checksum != new[p].checksum for p in old)
    only_content = not any(
        p in new and old[p] != new[p] and old[p].checksum == new[p].checksum for p in old
    )
    return changed, only_content


def test_tree_comparison_column_by_column_agrees_with_entry_by_entry(
    embedded_lake: store.Lake,
) -> None:
    import random

    backend = embedded_lake.backend
    trees = backend.trees
    rng = random.Random(8)

    def entry(path: str, content: bytes, mtime: int, inline: bool = True) -> Entry:
        from store.backends.embedded import layout

        checksum = layout.content_id(content)
        address = None if inline else layout.address(checksum, layout.RAW)
        return Entry(path, checksum, len(content), mtime, address, content if inline else None)

    # Enough paths for several ranges, so shared ranges are skipped and others compared.
    base = {
        f"d{i // 100}/f{i:05d}": entry(f"d{i // 100}/f{i:05d}", b"v%d" % i, 1) for i in range(2500)
    }
    with backend.lock.writing(), backend.objects.batch():
        base_tree = trees.build(base[p] for p in sorted(base))
        cases: list[dict[str, Entry | None]] = [
            {},
            {"d3/f00301": entry("d3/f00301", b"changed", 2)},
            {"d3/f00301": None},
            {"new/path": entry("new/path", b"n", 2)},
            {"d7/f00700": entry("d7/f00700", b"v700", 5)},  # same bytes, newer time
            {"d7/f00700": entry("d7/f00700", b"v700", 1, inline=False)},  # same bytes, stored
            {"d1/f00100": entry("d1/f00100", b"x", 2), "d9/f00900": entry("d9/f00900", b"v900", 9)},
        ]
        for _ in range(20):
            change: dict[str, Entry | None] = {}
            for path in rng.sample(sorted(base), rng.randint(1, 6)):
                kind = rng.choice(["content", "time", "gone"])
                old = base[path]
                change[path] = (
                    None
                    if kind == "gone"
                    else entry(path, b"r%d" % rng.randint(0, 9), 3)
                    if kind == "content"
                    else entry(path, old.inline or b"", old.mtime_ns + 1)
                )
            cases.append(change)
        for change in cases:
            other = trees.apply(base_tree, change)
            for left, right in ((base_tree, other), (other, base_tree)):
                compared = trees.compare(left, right)
                expected = _python_comparison(backend, left, right)
                assert (compared.changed, compared.only_content) == expected, change
                assert compared.changed == bool(trees.diff(left, right))
                assert trees.differs_only_in_content(left, right) == expected[1]


@pytest.mark.parametrize("earlier_commit", [False, True])
def test_a_commit_merging_makes_the_merge_the_three_way_merge_makes(
    lake_with_dev: store.Lake, earlier_commit: bool
) -> None:
    lake = lake_with_dev
    backend = lake.backend
    base = lake.get_branch("dev").head().id
    work = lake.branch("work", source="dev")
    if earlier_commit:  # the work branch is then a commit ahead of the merge base
        work.write_bytes("earlier.txt", b"earlier")
        work.commit("earlier")
    work.write_bytes("added/new.bin", b"\x00" * 5000)
    work.delete("remove.txt")
    commit, merged = work.commit_merging("finish", writes={"change.txt": b"after"}, into="dev")

    assert merged is not None and merged.parents == (base, commit.id)
    expected = _three_way_entries(backend, base, commit.id, base)
    merged_tree = backend._commit_row(merged.id).tree
    assert merged_tree == backend._commit_row(commit.id).tree
    assert _entries(backend, merged_tree) == expected
    assert backend.fsck() == []


def test_a_commit_merging_onto_a_same_bytes_rewrite_leaves_the_merge_to_three_ways(
    lake_with_dev: store.Lake,
) -> None:
    lake = lake_with_dev
    backend = lake.backend
    base = lake.get_branch("dev").head().id
    work = lake.branch("work", source="dev")
    # A commit on the work branch holding "same.txt" with the same bytes under a newer time.
    old = backend.trees.get(backend._commit_row(base).tree, "same.txt")
    assert old is not None
    newer = Entry(old.path, old.checksum, old.size, old.mtime_ns + 1, old.address, old.inline)
    with backend.lock.writing():
        with backend.objects.batch():
            tree = backend.trees.apply(backend._commit_row(base).tree, {"same.txt": newer})
            row = backend._write_commit(tree, (base,), "newer time", {}, "tester")
        assert backend._advance(work.backend_name, base, row)
    commit, merged = work.commit_merging("finish", writes={"change.txt": b"after"}, into="dev")
    assert merged is None and lake.get_branch("dev").head().id == base
    expected = _three_way_entries(backend, base, commit.id, base)
    merged = lake.merge("work", into="dev")
    assert _entries(backend, backend._commit_row(merged.id).tree) == expected


def test_a_commit_beside_many_small_inline_files_rewrites_only_a_small_range(
    embedded_lake: store.Lake,
) -> None:
    from store.backends.embedded import layout
    from store.backends.embedded.tree import MAX_RANGE_INLINE_BYTES

    backend = embedded_lake.backend
    trees = backend.trees

    def inline(path: str, content: bytes) -> Entry:
        return Entry(path, layout.content_id(content), len(content), 1, None, content)

    code = [inline(f"code/{i:04d}", b"%04d" % i * 500) for i in range(200)]  # 2 kB each
    with backend.lock.writing(), backend.objects.batch():
        before = trees.build(code)
        after = trees.apply(before, {"runs/r1/run.json": inline("runs/r1/run.json", b"{}")})
    old, new = trees.ranges(before), trees.ranges(after)
    assert len(old) >= 200 * 2000 // MAX_RANGE_INLINE_BYTES
    for r in old:
        assert sum(len(e.inline or b"") for e in trees.range_entries(r.id)[:-1]) < (
            MAX_RANGE_INLINE_BYTES
        )
    rewritten = {r.id for r in new} - {r.id for r in old}
    assert len(rewritten) == 1
    (written,) = [r for r in new if r.id in rewritten]
    assert written.count <= MAX_RANGE_INLINE_BYTES // 2000 + 2


def test_commit_rows_kept_in_memory_are_the_stored_ones_and_go_with_gc(
    embedded_lake: store.Lake,
) -> None:
    from datetime import timedelta

    backend = embedded_lake.backend
    gone = embedded_lake.branch("gone")
    commit = gone.commit("to drop", writes={"a.txt": b"a"})
    statements: list[str] = []
    backend.refs._conn.set_trace_callback(statements.append)
    try:
        first = backend._commit_row(commit.id)
        assert backend._commit_row(commit.id) == first == backend.refs.commit(commit.id)
        assert sum("FROM commits WHERE id" in s for s in statements) == 1  # the direct read
    finally:
        backend.refs._conn.set_trace_callback(None)
    assert embedded_lake.commit(commit.id).message == "to drop"
    embedded_lake.delete_branch("gone")
    embedded_lake.gc(retention=timedelta(0))
    with pytest.raises(errors.RefNotFoundError):
        embedded_lake.commit(commit.id)


_OTHER_WRITER = """
import sys
import store
lake = store.open(sys.argv[1])
dev = lake.get_branch("dev")
dev.write_bytes(sys.argv[2], b"from the other writer")
if sys.argv[3] == "commit":
    dev.commit("the other writer")
lake.close()
"""


@pytest.mark.parametrize("other", ["commit", "stage"])
def test_a_commit_merging_never_loses_what_another_process_wrote_on_the_destination_meanwhile(
    lake_with_dev: store.Lake, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """Another process writes to the destination after the combined step looked at it and
    before its transaction: a commit (the destination moved) leaves the merge to Lake.merge,
    which keeps both; an uncommitted write stays uncommitted over the merge, as it would
    after a merge made just before it."""
    import subprocess
    import sys

    lake = lake_with_dev
    backend: Any = lake.backend
    embedded = backend._inner._inner  # under the error view and the policy layer
    base = lake.get_branch("dev").head().id
    work = lake.branch("work", source="dev")
    work.write_bytes("added/new.bin", b"\x00" * 5000)
    real = embedded._fast_merge_head
    ran: list[int] = []

    def then_another_writer(*args: Any) -> Any:
        found = real(*args)
        done = subprocess.run(
            [sys.executable, "-c", _OTHER_WRITER, lake.location, "other.txt", other],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        ran.append(done.returncode)
        return found

    monkeypatch.setattr(embedded, "_fast_merge_head", then_another_writer)
    commit, merged = work.commit_merging("finish", writes={"change.txt": b"after"}, into="dev")
    monkeypatch.setattr(embedded, "_fast_merge_head", real)
    assert ran == [0] and work.head().id == commit.id
    dev = lake.get_branch("dev")
    if other == "commit":
        theirs = dev.head()
        assert merged is None and theirs.id != base and theirs.parents == (base,)
        merged = lake.merge("work", into="dev")
        assert merged.parents == (theirs.id, commit.id)
        assert _entries(backend, backend._commit_row(merged.id).tree) == _three_way_entries(
            backend, base, commit.id, theirs.id
        )
    else:
        assert merged is not None and merged.parents == (base, commit.id)
        assert dev.head().id == merged.id
        assert [c.path for c in dev.uncommitted()] == ["other.txt"]
    assert dev.read_bytes("other.txt") == b"from the other writer"
    assert dev.read_bytes("change.txt") == b"after"
    assert dev.read_bytes("added/new.bin") == b"\x00" * 5000
    assert backend.fsck() == []


def test_commit_mergings_ending_at_once_into_one_branch_keep_every_commit(
    lake_with_dev: store.Lake,
) -> None:
    """Several threads end their branches into ``dev`` at the same moment: one may merge in
    the combined step, the others find ``dev`` moved and merge with Lake.merge; ``dev`` ends
    with every branch's writes and every commit as an ancestor."""
    import threading

    lake = lake_with_dev
    works = [lake.branch(f"work{i}", source="dev") for i in range(4)]
    start = threading.Barrier(len(works))
    results: dict[int, tuple[str, str]] = {}
    failures: list[BaseException] = []

    def finish(i: int) -> None:
        try:
            work = works[i]
            work.write_bytes(f"out/{i}.bin", bytes([i]) * 3000)
            start.wait(timeout=30)
            commit, merged = work.commit_merging(
                f"finish {i}", writes={f"record/{i}.txt": b"r"}, into="dev"
            )
            if merged is None:
                merged = lake.merge(work.name, into="dev")
            results[i] = (commit.id, merged.id)
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    dev = lake.get_branch("dev")
    backend: Any = lake.backend
    head = dev.head().id
    for i, (commit, merged) in results.items():
        assert dev.read_bytes(f"out/{i}.bin") == bytes([i]) * 3000
        assert dev.read_bytes(f"record/{i}.txt") == b"r"
        assert backend.merge_base(commit, head) == commit
        assert backend.merge_base(merged, head) == merged
    assert len(results) == len(works) and backend.fsck() == []
