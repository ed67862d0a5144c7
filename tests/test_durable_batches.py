"""Embedded object store: batched writes are durable before anything references them.

A process kill cannot lose what the page cache holds, so these tests check the order of the
system calls themselves: every object a staging or commit transaction references has had its
file fsynced before its rename into place, and its folder (and any fan-out folder created for
it) fsynced after the rename, all before the transaction; a batch fsyncs each folder once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

import store
from store.backends.embedded import layout
from store.backends.embedded.objects import ObjectStore
from store.backends.embedded.refdb import RefDB
from store.tables import encode


class SyscallLog:
    """Records fsyncs (by path), renames, folder creations and SQLite write transactions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def fsyncs(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "fsync"]

    def check_durable_before_each_transaction(self, objects_root: str) -> int:
        """Assert the ordering rules at every transaction; the number of objects checked."""
        synced_files: set[str] = set()
        published: list[tuple[int, str, str]] = []  # (event index, final path, temp path)
        created: list[tuple[int, str]] = []
        checked = 0
        for i, event in enumerate(self.events):
            kind = event[0]
            if kind == "fsync":
                synced_files.add(event[1])
            elif kind == "replace" and event[2].startswith(objects_root):
                assert event[1] in synced_files, f"{event[2]} renamed before its bytes were synced"
                published.append((i, event[2], event[1]))
            elif kind == "mkdir" and event[1].startswith(objects_root):
                created.append((i, event[1]))
            elif kind == "tx":
                for at, final, _ in published:
                    folder = os.path.dirname(final)
                    assert ("fsync", folder) in self.events[at:i], f"{final}: folder not synced"
                    checked += 1
                for at, folder in created:
                    parent = os.path.dirname(folder)
                    assert ("fsync", parent) in self.events[at:i], f"{folder}: parent not synced"
                published.clear()
                created.clear()
        return checked


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyscallLog]:
    log = SyscallLog()
    lock = threading.Lock()
    real_fsync, real_replace, real_mkdir, real_write = os.fsync, os.replace, os.mkdir, RefDB.write

    def fsync(fd: int) -> None:
        with lock:
            log.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        with lock:
            log.events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))

    def mkdir(path: str, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        with lock:
            log.events.append(("mkdir", os.path.realpath(path)))

    @contextlib.contextmanager
    def write(self: RefDB) -> Iterator[object]:
        with real_write(self) as conn:
            yield conn
            with lock:
                log.events.append(("tx",))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(RefDB, "write", write)
    yield log


def _parquet(i: int) -> bytes:
    with encode(pa.table({"i": [i] * 10, "s": [f"row {i}"] * 10})) as encoded:
        return encoded.read()  # type: ignore[no-any-return]


def test_batched_writes_and_commits_are_durable_before_the_transaction_that_references_them(
    embedded_lake: store.Lake, syscalls: SyscallLog
) -> None:
    branch = embedded_lake.branch("work", source="main")
    objects_root = os.path.realpath(embedded_lake.backend.objects.root)  # type: ignore[attr-defined]
    syscalls.events.clear()
    branch.write_many([(f"t/{i}.parquet", _parquet(i)) for i in range(6)])
    batch_fsyncs = syscalls.fsyncs()
    # Six files synced once each, and no folder synced twice within the batch.
    temps = os.path.join(objects_root, "tmp") + "/"
    assert len([p for p in batch_fsyncs if p.startswith(temps)]) == 6
    folders = [p for p in batch_fsyncs if not p.startswith(temps)]
    assert folders and len(folders) == len(set(folders))
    branch.commit("six tables")
    embedded_lake.merge("work", into="main")
    # Six blobs, then the commit's range and metarange (commit records are rows, not objects).
    assert syscalls.check_durable_before_each_transaction(objects_root) >= 6 + 1 + 1
    assert branch.read_bytes("t/3.parquet") == _parquet(3)


def test_a_commit_that_writes_makes_its_objects_durable_before_its_one_transaction(
    embedded_lake: store.Lake, syscalls: SyscallLog
) -> None:
    branch = embedded_lake.branch("work", source="main")
    objects_root = os.path.realpath(embedded_lake.backend.objects.root)  # type: ignore[attr-defined]
    branch.write_bytes("staged.parquet", _parquet(0))
    syscalls.events.clear()
    branch.commit("with writes", writes={f"t/{i}.parquet": _parquet(i) for i in range(1, 4)})
    assert [e for e in syscalls.events if e[0] == "tx"] == [("tx",)]
    # Three blobs, the ranges and the metarange (the commit record goes in with the head move).
    assert syscalls.check_durable_before_each_transaction(objects_root) >= 3 + 1 + 1
    assert branch.read_bytes("t/2.parquet") == _parquet(2)
    assert list(branch.uncommitted()) == []


def test_a_commit_and_its_merge_are_durable_before_their_one_transaction(
    embedded_lake: store.Lake, syscalls: SyscallLog
) -> None:
    dev = embedded_lake.branch("dev", source="main")
    dev.commit("base", writes={"base.parquet": _parquet(0)})
    work = embedded_lake.branch("work", source="dev")
    objects_root = os.path.realpath(embedded_lake.backend.objects.root)  # type: ignore[attr-defined]
    work.write_bytes("staged.parquet", _parquet(1))
    syscalls.events.clear()
    commit, merged = work.commit_merging("finish", writes={"t/2.parquet": _parquet(2)}, into="dev")
    assert merged is not None and merged.parents[1] == commit.id
    assert [e for e in syscalls.events if e[0] == "tx"] == [("tx",)]
    # The blob, the range and the metarange; both commit records are rows of the transaction.
    assert syscalls.check_durable_before_each_transaction(objects_root) >= 1 + 1 + 1
    assert dev.head().id == merged.id and work.head().id == commit.id
    assert dev.read_bytes("t/2.parquet") == _parquet(2)
    assert embedded_lake.backend.fsck() == []  # type: ignore[attr-defined]


def test_a_branch_and_its_first_writes_are_one_transaction_after_the_blobs_are_durable(
    embedded_lake: store.Lake, syscalls: SyscallLog
) -> None:
    objects_root = os.path.realpath(embedded_lake.backend.objects.root)  # type: ignore[attr-defined]
    syscalls.events.clear()
    branch = embedded_lake.branch(
        "born", writes=[(f"t/{i}.parquet", _parquet(i)) for i in range(3)]
    )
    assert [e for e in syscalls.events if e[0] == "tx"] == [("tx",)]
    assert syscalls.check_durable_before_each_transaction(objects_root) >= 3
    assert branch.read_bytes("t/1.parquet") == _parquet(1)


def test_a_batch_publishes_nothing_when_its_block_raises(tmp_path: Path) -> None:
    objects = ObjectStore(_local_fs(), str(tmp_path / "objects"))
    with pytest.raises(RuntimeError), objects.batch():
        stored = objects.put_bytes(b"never published" * 1000)
        assert objects.get_bytes(stored.address) == b"never published" * 1000
        raise RuntimeError("the writer failed")
    assert not objects.exists(stored.address)
    assert os.listdir(tmp_path / "objects" / "tmp") == []


def test_a_batch_hides_its_objects_from_other_threads_until_it_ends(tmp_path: Path) -> None:
    objects = ObjectStore(_local_fs(), str(tmp_path / "objects"))
    seen: list[bool] = []
    with objects.batch():
        stored = objects.put_bytes(b"batched" * 1000)
        again = objects.put_bytes(b"batched" * 1000)  # deduplicated inside the batch
        worker = threading.Thread(target=lambda: seen.append(objects.exists(stored.address)))
        worker.start()
        worker.join()
        assert objects.get_bytes(stored.address) == b"batched" * 1000
    assert again == stored and seen == [False]
    assert objects.exists(stored.address)
    assert os.listdir(tmp_path / "objects" / "tmp") == []


def _local_fs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("file")


def test_a_stored_content_is_found_again_without_choosing_its_codec_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = ObjectStore(_local_fs(), str(tmp_path / "objects"))
    chosen: list[int] = []
    real_choose = layout.choose_codec

    def choose(sample: bytes) -> str:
        chosen.append(len(sample))
        return real_choose(sample)

    monkeypatch.setattr(layout, "choose_codec", choose)
    texts = objects.put_bytes(b"compressible text " * 1000)
    noise = objects.put_bytes(os.urandom(20_000))
    assert texts.address.endswith(layout.ZSTD) and not noise.address.endswith(layout.ZSTD)
    assert objects.put_bytes(b"compressible text " * 1000) == texts
    assert objects.put_bytes(objects.get_bytes(noise.address)) == noise
    assert len(chosen) == 2


def test_zstd_objects_are_the_same_bytes_from_a_reused_context_in_any_thread() -> None:
    import zstandard

    contents = [b"range rows " * 5000, os.urandom(3000) + b"x" * 3000, b"tiny " * 20]

    def fresh(data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=layout.ZSTD_LEVEL).compress(data)

    # Several objects one after another through this thread's context, then another thread's.
    here = [layout.encode(c, layout.ZSTD) for c in [*contents, *reversed(contents)]]
    there: list[bytes] = []
    worker = threading.Thread(
        target=lambda: there.extend(layout.encode(c, layout.ZSTD) for c in contents)
    )
    worker.start()
    worker.join()
    assert here[:3] == [fresh(c) for c in contents] == there
    assert here[3:] == [fresh(c) for c in reversed(contents)]
    assert [layout.decode(b, layout.ZSTD) for b in here[:3]] == contents
    with pytest.raises(zstandard.ZstdError):
        layout.decode(b"not a frame", layout.ZSTD)
    assert layout.decode(here[0], layout.ZSTD) == contents[0]  # the context survives an error


def test_a_forked_child_publishes_batches_with_threads_of_its_own(tmp_path: Path) -> None:
    objects = ObjectStore(_local_fs(), str(tmp_path / "objects"))
    with objects.batch():  # starts the parent's fsync threads
        objects.put_bytes(b"parent one" * 100)
        objects.put_bytes(b"parent two" * 100)
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads do not exist here
        code = 1
        try:
            with objects.batch():
                stored = [objects.put_bytes(f"child {i}".encode() * 100) for i in range(3)]
            code = 0 if all(objects.exists(s.address) for s in stored) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung publishing a batch")
    objects.close()


def test_temporary_files_never_take_over_an_existing_name_and_stay_durable(
    tmp_path: Path, syscalls: SyscallLog
) -> None:
    from store import tempfiles

    objects = ObjectStore(_local_fs(), str(tmp_path / "objects"))
    temps = tmp_path / "objects" / "tmp"
    # Names a killed process with this very pid and thread left behind: skipped, untouched.
    counter = tempfiles._counter
    upcoming = next(counter) + 1
    for n in range(upcoming, upcoming + 3):
        (temps / f"{os.getpid()}-{threading.get_ident()}-{n}").write_bytes(b"left over")
    with objects.batch():
        first = objects.put_bytes(b"first object" * 500)
        second = objects.put_bytes(b"second object" * 500)
    assert sorted(p.read_bytes() for p in temps.iterdir()) == [b"left over"] * 3
    for p in temps.iterdir():
        p.unlink()
    # The temporary folder removed under the store: made again.
    temps.rmdir()
    third = objects.put_bytes(b"third object" * 500)
    for stored, data in ((first, b"first object"), (second, b"second object")):
        assert objects.get_bytes(stored.address) == data * 500
    assert objects.get_bytes(third.address) == b"third object" * 500
    assert os.listdir(temps) == []
    # Each object's bytes were fsynced under their temporary name before it was renamed.
    renames = [(i, e) for i, e in enumerate(syscalls.events) if e[0] == "replace"]
    assert len(renames) == 3
    for at, (_, src, dst) in renames:
        assert ("fsync", src) in syscalls.events[:at], f"{dst} renamed before its bytes were synced"
    renames = [e for _, e in renames]
    assert all(os.stat(dst).st_mode & 0o777 == 0o600 for _, _, dst in renames)
