"""Large ``write_many`` batches staged as one columnar object: reads, overrides, crashes, gc.

On the embedded backend a ``put_many`` of at least ``BATCH_FROM`` objects is staged as one
batch object and one refs row instead of a row per object; every other backend stages it its
own way, and the behaviour must be the same everywhere.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

import store
from store import errors
from store.backends.embedded import layout
from store.backends.embedded.backend import BATCH_CODEC, BATCH_FROM, _rows_table
from store.backends.embedded.refdb import StagedChange
from store.backends.embedded.tree import Entry
from store.model import ChangeKind

N = BATCH_FROM + 20


def items(tag: str, n: int = N, prefix: str = "b") -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{i:04d}.bin", f"{tag}-{i}".encode()) for i in range(n)]


def test_a_staged_batch_reads_lists_and_commits_like_single_writes(lake: store.Lake) -> None:
    branch = lake.branch("batch")
    branch.write_bytes("b/0003.bin", b"committed before")
    branch.commit("one file")
    batch = items("v1")
    batch.append(("big.bin", os.urandom(20_000)))  # stored as a blob, named by the batch
    batch.append(("b/0007.bin", b"written twice: the last one wins"))
    assert branch.write_many(batch) == len(batch)
    expected = dict(batch)

    assert branch.read_bytes("b/0005.bin") == b"v1-5"
    assert branch.read_bytes("big.bin") == expected["big.bin"]
    assert branch.read_bytes("b/0007.bin") == b"written twice: the last one wins"
    assert {o.path for o in branch.list("b/001")} == {f"b/{i:04d}.bin" for i in range(10, 20)}
    kinds = {c.path: c.kind for c in branch.uncommitted()}
    assert len(kinds) == len(expected)
    assert kinds["b/0003.bin"] == ChangeKind.CHANGED and kinds["b/0004.bin"] == ChangeKind.ADDED

    commit = branch.commit("a batch")
    assert branch.uncommitted() == []
    assert {o.path for o in lake.list(commit.id)} == set(expected)
    assert lake.read_bytes("b/0100.bin", ref=commit.id) == b"v1-100"
    assert lake.read_bytes("big.bin", ref=commit.id) == expected["big.bin"]


def test_later_single_writes_and_deletes_override_a_batch_and_a_later_batch_overrides_them(
    lake: store.Lake,
) -> None:
    branch = lake.branch("override")
    branch.write_many(items("v1"))
    branch.write_bytes("b/0001.bin", b"single after batch")
    branch.delete("b/0002.bin")
    assert branch.read_bytes("b/0001.bin") == b"single after batch"
    assert not branch.exists("b/0002.bin")

    branch.write_bytes("b/0010.bin", b"single before the second batch")
    branch.write_many(items("v2", n=BATCH_FROM, prefix="b")[5:])  # holds 0010, not 0001/0002
    assert branch.read_bytes("b/0010.bin") == b"v2-10"
    assert branch.read_bytes("b/0001.bin") == b"single after batch"
    assert branch.read_bytes("b/0004.bin") == b"v1-4"
    branch.commit("both batches")
    assert branch.read_bytes("b/0010.bin") == b"v2-10"
    assert branch.read_bytes("b/0001.bin") == b"single after batch"
    assert not branch.exists("b/0002.bin")
    assert branch.read_bytes(f"b/{N - 1:04d}.bin") == f"v1-{N - 1}".encode()


def test_reset_discards_a_staged_batch(lake: store.Lake) -> None:
    branch = lake.branch("discard")
    branch.write_many(items("v1"))
    branch.reset()
    assert branch.uncommitted() == [] and branch.list() == []
    with pytest.raises(errors.StoreError):
        branch.read_bytes("b/0001.bin")


def test_a_batch_that_changes_nothing_leaves_nothing_to_commit(
    embedded_lake: store.Lake,
) -> None:
    branch = embedded_lake.branch("same")
    branch.write_many(items("v1"))
    branch.commit("first")
    branch.write_many(items("v1"))
    assert branch.uncommitted() == []
    with pytest.raises(errors.NothingToCommitError):
        branch.commit("again")


def test_column_by_column_apply_builds_the_same_tree_as_row_by_row(
    embedded_lake: store.Lake,
) -> None:
    trees = embedded_lake.backend.trees
    rnd = random.Random(8)
    tree = trees.build([])
    for size in (50, 3000, 9000, 200):
        paths = sorted({f"d/{rnd.randrange(12000):06d}é" for _ in range(size)})
        changes: dict[str, Entry | None] = {}
        for path in paths:
            length = rnd.choice([3, 40, 300_000])  # large inline contents cut ranges by bytes
            entry = Entry(path, "ab" * 32, length, 7, None, b"q" * length)
            changes[path] = None if rnd.random() < 0.2 else entry
        rows = trees.apply(tree, changes)
        staged = [StagedChange(p, changes[p]) for p in paths]
        assert trees.apply_table(tree, _rows_table(staged)) == rows
        tree = rows
    assert len(trees.ranges(tree)) > 10


WORKER = textwrap.dedent(
    """
    import sys, time
    import store
    lake = store.open(sys.argv[1])
    branch = lake.branch("crash", exist_ok=True)
    if sys.argv[2] == "stage":
        branch.write_many([(f"b/{i:04d}.bin", f"v-{i}".encode()) for i in range(int(sys.argv[3]))])
    else:
        print(branch.commit("batch").id, flush=True)
    print("acknowledged", flush=True)
    time.sleep(600)
    """
)


def run_then_kill(lake: Path, *args: str) -> list[str]:
    """Run the worker until it acknowledges, then SIGKILL it; its printed lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(lake), *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == "acknowledged":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert lines[-1:] == ["acknowledged"], lines
    return lines


def test_a_staged_batch_and_its_commit_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    store.open(path).close()
    run_then_kill(path, "stage", str(N))
    with store.open(path) as lake:
        branch = lake.branch("crash", exist_ok=True)
        assert len(branch.uncommitted()) == N
        assert branch.read_bytes("b/0042.bin") == b"v-42"
        assert lake.fsck() == []
    commit_id = run_then_kill(path, "commit")[0]
    with store.open(path) as lake:
        branch = lake.branch("crash", exist_ok=True)
        assert branch.head().id == commit_id and branch.uncommitted() == []
        assert lake.read_bytes(f"b/{N - 1:04d}.bin", ref=commit_id) == f"v-{N - 1}".encode()
        assert lake.fsck() == []


def test_gc_keeps_a_staged_batch_and_the_blobs_it_names(embedded_lake: store.Lake) -> None:
    branch = embedded_lake.branch("kept")
    big = os.urandom(30_000)
    branch.write_many([*items("v1"), ("big.bin", big)])
    embedded_lake.gc(timedelta(0))
    assert branch.read_bytes("big.bin") == big and branch.read_bytes("b/0001.bin") == b"v1-1"
    assert embedded_lake.fsck() == []
    branch.commit("batch")
    embedded_lake.gc(timedelta(0))
    assert branch.read_bytes("big.bin") == big
    assert embedded_lake.fsck() == []


def batch_object(lake: store.Lake) -> tuple[Path, str]:
    backend = lake.backend
    with sqlite3.connect(os.path.join(backend.root, "refs.db")) as conn:
        (object_id,) = conn.execute("SELECT object FROM staged_batches").fetchone()
    return Path(backend.objects.full_path(layout.address(object_id, BATCH_CODEC))), object_id


def test_a_damaged_batch_object_is_an_error_for_reads_fsck_and_gc(
    embedded_lake: store.Lake,
) -> None:
    branch = embedded_lake.branch("damaged")
    branch.write_many(items("v1"))
    path, object_id = batch_object(embedded_lake)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptObjectError):
        branch.read_bytes("b/0001.bin")
    with pytest.raises(errors.StoreError):
        branch.commit("damaged")
    assert any(object_id in p for p in embedded_lake.fsck())
    with pytest.raises(errors.StoreError):
        embedded_lake.gc(timedelta(0))


def test_a_batch_row_that_disagrees_with_its_object_is_reported(
    embedded_lake: store.Lake,
) -> None:
    branch = embedded_lake.branch("row")
    branch.write_many(items("v1"))
    with sqlite3.connect(os.path.join(embedded_lake.backend.root, "refs.db")) as conn:
        conn.execute("UPDATE staged_batches SET count = count + 1")
    with pytest.raises(errors.CorruptObjectError, match="entries where its row says"):
        branch.uncommitted()
    assert any("entries where its row says" in p for p in embedded_lake.fsck())
    with sqlite3.connect(os.path.join(embedded_lake.backend.root, "refs.db")) as conn:
        conn.execute("UPDATE staged_batches SET object = 'nope'")
    assert any("staged batch" in p and "damaged" in p for p in embedded_lake.fsck())


def test_paths_read_one_by_one_from_a_staged_batch_read_its_object_once(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    branch = embedded_lake.branch("lookups")
    branch.write_many(items("v1"))
    trees = embedded_lake.backend.trees
    reads: list[str] = []
    original = trees.entry_table
    monkeypatch.setattr(trees, "entry_table", lambda *a: reads.append(a[0]) or original(*a))
    for i in range(0, 40, 2):
        assert branch.read_bytes(f"b/{i:04d}.bin") == f"v1-{i}".encode()
    branch.delete(*(f"b/{i:04d}.bin" for i in range(1, 40, 2)))
    assert len(reads) == 1
    assert len(branch.uncommitted()) == N - 20
