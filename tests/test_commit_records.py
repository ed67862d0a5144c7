"""Embedded backend: a commit's record lives in the refs database only, never as an object.

Commit records are rows of the ``commits`` table, inserted by the transaction that moves the
head (as lakeFS keeps commits in its KV store); only ranges and metaranges are objects. Lakes
written when records were also stored as ``.zst`` objects keep reading, fsck clean, and gc
removes those objects once they are older than the retention.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import store
from store.backends.embedded import layout

# Every kind of commit the embedded backend makes, in a process that then exits.
WRITER = textwrap.dedent(
    """
    import json, sys
    import store

    lake = store.open(sys.argv[1])
    dev = lake.branch("dev")
    dev.write_bytes("a.txt", b"first")
    first = dev.commit("staged commit")
    second = dev.commit("commit with writes", writes={"b.txt": b"second"})
    work = lake.branch("work", source="dev")
    done, fast = work.commit_merging("run end", writes={"c.txt": b"third"}, into="dev")
    merged = lake.merge("dev", into="main")
    reverted = lake.revert("dev", second.id)
    lake.tag("v1", first.id)
    ids = {
        "first": first.id, "second": second.id, "done": done.id, "fast": fast.id,
        "merged": merged.id, "reverted": reverted.id,
    }
    print(json.dumps({k: [v, lake.commit(v).message] for k, v in ids.items()}))
    lake.close()
    """
)


def object_ids(backend: Any) -> set[str]:
    return {layout.parse_address(addr)[0] for addr, _ in backend.objects.iter_addresses()}


def backend_of(lake: store.Lake) -> Any:
    """The lake's embedded backend (through the proxies that wrap it, which pass attributes)."""
    return lake.backend


def test_no_commit_writes_a_commit_object_and_history_reads_after_its_process_is_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lake"
    made = subprocess.run(
        [sys.executable, "-c", WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    written: dict[str, list[str]] = json.loads(made.stdout)
    lake = store.open(path)
    try:
        backend = backend_of(lake)
        commits = {row.id: row for row, _ in backend.refs.all_commits()}
        assert {commit_id for commit_id, _ in written.values()} < commits.keys()
        # No commit, the lake's first included, is an object; every id hashes its row's record.
        assert not commits.keys() & object_ids(backend)
        assert all(layout.content_id(row.record) == commit_id for commit_id, row in commits.items())
        for commit_id, message in written.values():
            assert lake.commit(commit_id).message == message
        log = [c.id for c in lake.log("main")]
        assert written["merged"][0] == log[0] and written["first"][0] in log
        assert written["fast"][0] in [c.id for c in lake.log("dev")]
        assert lake.read_bytes("c.txt", ref="main") == b"third"
        assert lake.read_bytes("a.txt", ref="v1") == b"first"
        assert not lake.exists("b.txt", ref="dev")  # reverted
        assert lake.fsck() == []
    finally:
        lake.close()


def test_a_commit_of_one_small_file_stores_only_its_range_and_metarange(
    embedded_lake: store.Lake,
) -> None:
    backend = backend_of(embedded_lake)
    dest = embedded_lake.branch("dest")
    work = embedded_lake.branch("work")
    before = object_ids(backend)
    commit, merged = work.commit_merging("one file", writes={"f.txt": b"small"}, into="dest")
    new = object_ids(backend) - before
    assert merged is not None and dest.head().id == merged.id
    tree = backend.refs.commit(commit.id)
    assert tree is not None
    assert len(new) == 2 and tree.tree in new  # one range and the metarange it heads
    assert commit.id not in new and merged.id not in new


def test_a_lake_with_commit_objects_fscks_clean_and_keeps_its_history_after_gc(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lake"
    lake = store.open(path)
    try:
        branch = lake.branch("exp")
        branch.write_bytes("model.bin", b"v1" * 10_000)
        first = branch.commit("v1")
        branch.write_bytes("model.bin", b"v2" * 10_000)
        second = branch.commit("v2")
        lake.merge("exp", into="main")
        lake.tag("first", first.id)
        backend = backend_of(lake)
        # The format before commit records lived in rows only: each record also as an object.
        rows = [row for row, _ in backend.refs.all_commits()]
        for row in rows:
            assert backend.objects.put_bytes(row.record, codec=layout.ZSTD).id == row.id
        legacy = {layout.address(row.id, layout.ZSTD) for row in rows}
        assert lake.fsck() == []

        removed = lake.gc(timedelta(0))

        present = {addr for addr, _ in backend.objects.iter_addresses()}
        assert removed >= len(legacy) and not legacy & present
        assert [c.id for c in lake.log("exp")][:2] == [second.id, first.id]
        assert lake.commit("first").message == "v1"
        assert lake.read_bytes("model.bin", ref="first") == b"v1" * 10_000
        assert lake.read_bytes("model.bin", ref="main") == b"v2" * 10_000
        assert lake.fsck() == []
    finally:
        lake.close()
