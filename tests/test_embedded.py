"""Behaviour only the embedded backend has: its on-disk format, integrity checks and gc."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import store
from store import errors


def blob_files(lake_path: Path) -> list[Path]:
    root = lake_path / "objects"
    return [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"]


def data_blob(lake: store.Lake, path: str, ref: str) -> Path:
    entry = lake.backend._entry(lake._read_ref(ref), path)
    return Path(lake.backend.objects.full_path(entry.address))


def test_compressible_data_is_zstd_and_random_data_is_raw(embedded_lake: store.Lake) -> None:
    branch = embedded_lake.branch("exp")
    branch.write_bytes("text.csv", b"a,b,c\n1,2,3\n" * 10000)
    branch.write_bytes("weights.bin", os.urandom(200_000))
    assert data_blob(embedded_lake, "text.csv", branch.name).suffix == ".zst"
    assert data_blob(embedded_lake, "text.csv", branch.name).stat().st_size < 10000
    assert data_blob(embedded_lake, "weights.bin", branch.name).suffix == ""


def test_identical_content_is_stored_once(embedded_lake: store.Lake, tmp_path: Path) -> None:
    branch = embedded_lake.branch("exp")
    payload = os.urandom(100_000)
    before = len(blob_files(tmp_path / "lake"))
    for i in range(5):
        branch.write_bytes(f"copy{i}.bin", payload)
    assert len(blob_files(tmp_path / "lake")) == before + 1


def test_duckdb_reads_committed_parquet_in_place(embedded_lake: store.Lake) -> None:
    branch = embedded_lake.branch("exp")
    branch.write_table("t.parquet", pa.table({"x": list(range(10_000))}))
    commit = branch.commit("table")
    path = embedded_lake.locate("t.parquet", ref=commit.id)
    assert path is not None and os.path.exists(path)
    assert duckdb.sql(f"SELECT sum(x) FROM read_parquet('{path}')").fetchall() == [(49995000,)]


def test_a_small_user_table_keeps_a_file_while_flowlakes_own_small_records_stay_inline(
    embedded_lake: store.Lake,
) -> None:
    branch = embedded_lake.branch("exp")
    table = pa.table({"x": [1, 2, 3]})
    branch.write_table("data/t.parquet", table)
    branch.write_table("_flowlake/runs/r/run.parquet", table)
    for ref in (branch.name, branch.commit("small tables").id):
        located = embedded_lake.locate("data/t.parquet", ref=ref)
        assert located is not None and duckdb.sql(
            f"SELECT sum(x) FROM read_parquet('{located}')"
        ).fetchall() == [(6,)]
        assert embedded_lake.locate("_flowlake/runs/r/run.parquet", ref=ref) is None
        assert embedded_lake.read_table("_flowlake/runs/r/run.parquet", ref=ref) == table
    assert embedded_lake.fsck() == []


def test_corrupted_object_is_detected_on_read_and_by_fsck(embedded_lake: store.Lake) -> None:
    branch = embedded_lake.branch("exp")
    branch.write_bytes("m.bin", os.urandom(50_000))
    branch.commit("model")
    blob = data_blob(embedded_lake, "m.bin", branch.name)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptObjectError):
        branch.read_bytes("m.bin")
    problems = embedded_lake.fsck()
    assert len(problems) == 1 and "m.bin" in problems[0]


def test_missing_object_is_reported_by_fsck(embedded_lake: store.Lake) -> None:
    branch = embedded_lake.branch("exp")
    branch.write_bytes("m.bin", os.urandom(50_000))
    branch.commit("model")
    data_blob(embedded_lake, "m.bin", branch.name).unlink()
    assert any("missing" in p for p in embedded_lake.fsck())


def test_gc_removes_only_unreachable_objects(embedded_lake: store.Lake, tmp_path: Path) -> None:
    keep = embedded_lake.branch("keep")
    keep.write_bytes("kept.bin", os.urandom(50_000))
    keep.commit("keep")
    drop = embedded_lake.branch("drop")
    drop.write_bytes("dropped.bin", os.urandom(50_000))
    drop.commit("drop")
    staged = embedded_lake.branch("staged")
    staged.write_bytes("staged.bin", os.urandom(50_000))
    dropped_blob = data_blob(embedded_lake, "dropped.bin", drop.name)
    embedded_lake.delete_branch(drop.name)

    assert embedded_lake.gc(retention=timedelta(hours=1)) == 0  # all too fresh
    assert dropped_blob.exists()
    removed = embedded_lake.gc(retention=timedelta(0))
    assert removed >= 1 and not dropped_blob.exists()
    assert keep.read_bytes("kept.bin") and staged.read_bytes("staged.bin")
    assert embedded_lake.fsck() == []


def test_objects_can_live_at_another_fsspec_location(tmp_path: Path) -> None:
    lake = store.open(tmp_path / "lake", objects="memory://flowlake-test-objects")
    branch = lake.branch("exp")
    branch.write_bytes("m.bin", os.urandom(100_000))
    branch.commit("remote")
    assert lake.read_bytes("m.bin", ref=branch.name) == lake.read_bytes("m.bin", ref="exp")
    assert lake.fsck() == []
    assert not (tmp_path / "lake" / "objects").exists()
    with pytest.raises(errors.InvalidArgumentError):
        store.open(tmp_path / "lake", objects="memory://somewhere-else")


def test_opening_without_create_needs_a_lake(tmp_path: Path) -> None:
    with pytest.raises(errors.LakeNotFoundError):
        store.open(tmp_path / "none", create=False)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file.txt").write_text("not a lake")
    with pytest.raises(errors.InvalidArgumentError):
        store.open(tmp_path / "stuff")


def test_reopened_lake_keeps_everything(tmp_path: Path) -> None:
    lake = store.open(tmp_path / "lake")
    branch = lake.branch("exp")
    branch.write_bytes("a", b"1")
    commit = branch.commit("a")
    branch.write_bytes("b", b"staged")
    lake.close()
    again = store.open(tmp_path / "lake", create=False)
    assert again.resolve("exp") == commit.id
    assert again.read_bytes("b", ref="exp") == b"staged"


def test_large_files_stream_in_bounded_memory(embedded_lake: store.Lake, tmp_path: Path) -> None:
    import tracemalloc

    source = tmp_path / "weights.bin"
    with open(source, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(4 << 20))  # 200 MiB
    branch = embedded_lake.branch("exp")
    tracemalloc.start()
    try:
        branch.write_file("models/weights.bin", source)
        with branch.open("models/weights.bin") as stream:
            while stream.read(1 << 20):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert branch.stat("models/weights.bin").size == 200 << 20
    assert peak < 48 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_gc_waits_for_a_write_in_flight_and_keeps_what_it_references(
    embedded_lake: store.Lake,
) -> None:
    import threading

    from store.backends.embedded.refdb import StagedChange
    from store.backends.embedded.tree import Entry

    backend = embedded_lake.backend
    scratch = embedded_lake.branch("scratch")
    payload = os.urandom(50_000)
    scratch.write_bytes("garbage.bin", payload)
    scratch.reset()  # the blob is garbage now
    target = embedded_lake.branch("target")
    removed: list[int] = []
    with backend.lock.writing():
        stored = backend.objects.put_bytes(payload)  # deduplicated against the garbage blob
        collector = threading.Thread(target=lambda: removed.append(embedded_lake.gc(timedelta(0))))
        collector.start()
        collector.join(timeout=0.5)
        assert collector.is_alive(), "gc deleted while a write was in flight"
        entry = Entry("kept.bin", stored.id, stored.size, 0, stored.address)
        backend._stage(backend_name(embedded_lake, target), [StagedChange("kept.bin", entry)])
    collector.join(timeout=60)
    assert removed and target.read_bytes("kept.bin") == payload
    assert embedded_lake.fsck() == []


def backend_name(lake: store.Lake, branch: store.Branch) -> str:
    return lake._read_ref(branch.name)


def test_gc_survives_temporary_files_that_vanish_under_it(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from store.backends.embedded import objects as objects_module

    store_ = embedded_lake.backend.objects
    tmp = Path(store_.full_path("tmp"))
    for i in range(3):
        (tmp / f"left-by-a-killed-writer-{i}").write_bytes(b"partial")
    real_scan = objects_module._scan

    def scan_then_vanish(directory: str) -> list[os.DirEntry[str]]:
        entries = real_scan(directory)
        if Path(directory) == tmp:
            (tmp / "left-by-a-killed-writer-0").unlink()  # a writer finishing meanwhile
        return entries

    monkeypatch.setattr(objects_module, "_scan", scan_then_vanish)
    embedded_lake.gc(timedelta(0))
    assert list(tmp.iterdir()) == []


def test_a_child_forked_during_a_write_does_not_keep_gc_out(embedded_lake: store.Lake) -> None:
    import signal
    import threading

    with embedded_lake.backend.lock.writing():
        child = os.fork()
        if child == 0:  # the child inherited the write's lock descriptor
            time.sleep(30)
            os._exit(0)
    try:
        collector = threading.Thread(target=embedded_lake.gc, args=(timedelta(0),))
        collector.start()
        collector.join(timeout=20)
        assert not collector.is_alive(), "gc waited for a forked child's copy of the lock"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


@pytest.mark.parametrize("retention", [6, 6.0, "6h", None])
def test_gc_refuses_a_retention_that_is_not_a_timedelta(
    lake: store.Lake, retention: object
) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="retention must be a datetime.timedelta"):
        lake.gc(retention)  # type: ignore[arg-type]


@pytest.mark.parametrize("ref", ["nope", "cafe", "cafe1234", "v9"])
def test_a_missing_ref_reads_the_same_on_every_path_and_backend(lake: store.Lake, ref: str) -> None:
    """Whether it looks like a name or a commit id prefix, one wording everywhere."""
    shown = repr(ref)
    for call in (
        lambda: lake.resolve(ref),
        lambda: lake.read_bytes("x", ref=ref),
        lambda: lake.list(ref=ref),
    ):
        with pytest.raises(errors.RefNotFoundError) as info:
            call()
        assert str(info.value).startswith("no branch, tag or commit named "), info.value
        assert shown in str(info.value) or ref in str(info.value)
