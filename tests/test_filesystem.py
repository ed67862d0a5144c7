"""``flowlake://`` URLs through fsspec: refs, read-only refs, transactions, caches, and the
libraries people read and write with (pandas, pyarrow.dataset, DuckDB), on every backend.

fsspec's own conformance suite runs in ``tests/test_filesystem_abstract.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import store
from store.errors import (
    ConflictError,
    DirtyBranchError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidPathError,
    LakeNotFoundError,
    ObjectChangedError,
    ObjectNotFoundError,
    ProtectedBranchError,
    ReadOnlyRefError,
    RefNotFoundError,
)
from store.url import FlowlakeFileSystem, LakeURL


@pytest.fixture
def fs(lake: store.Lake, lake_access: Any) -> Iterator[FlowlakeFileSystem]:
    """A filesystem on the ``lake`` fixture's lake, opened from its location as users do."""
    opened = FlowlakeFileSystem(lake=lake_access.location, skip_instance_cache=True)
    yield opened
    opened.close()


@pytest.fixture
def storage_options(lake_access: Any) -> dict[str, Any]:
    return {"lake": lake_access.location, "skip_instance_cache": True}


def _published(lake: store.Lake) -> tuple[store.Branch, store.Commit]:
    """Branch ``exp`` with two commits merged into main, tagged ``v1`` at the first."""
    exp = lake.branch("exp")
    exp.write_bytes("data/a.txt", b"one")
    first = exp.commit("first")
    lake.tag("v1", exp.name)
    exp.write_bytes("data/a.txt", b"two")
    exp.commit("second")
    lake.merge(exp.name, into="main")
    return exp, first


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ref", "path"),
    [
        ("flowlake://main/data/train.parquet", "main", "data/train.parquet"),
        ("flowlake://v1/data/", "v1", "data"),
        ("flowlake://exp~2/m.bin", "exp~2", "m.bin"),
        ("flowlake://0a1b2c3d/m.bin", "0a1b2c3d", "m.bin"),
        ("flowlake://user:avery/exp/data/x.csv", "user:avery/exp", "data/x.csv"),
        ("flowlake://team:vision/exp~1/x", "team:vision/exp~1", "x"),
        ("flowlake://production/main/data", "production/main", "data"),
        ("flowlake://main", "main", ""),
        ("main/data", "main", "data"),
    ],
)
def test_url_names_a_ref_and_a_path(url: str, ref: str, path: str) -> None:
    parsed = LakeURL.parse(url)
    assert (parsed.ref, parsed.path) == (ref, path)
    assert LakeURL.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("flowlake://", InvalidNameError),
        ("flowlake:///data/x", InvalidNameError),
        ("flowlake://user:avery", InvalidNameError),
        ("flowlake://user:avery/", InvalidNameError),
        ("flowlake://main/../secret", InvalidPathError),
        ("flowlake://main/data/../../x", InvalidPathError),
        ("flowlake://main/a//b", InvalidPathError),
        ("flowlake://main/./a", InvalidPathError),
    ],
)
def test_malformed_url_is_refused_with_the_store_error(url: str, error: type) -> None:
    with pytest.raises(error):
        LakeURL.parse(url)


def test_registered_with_fsspec_without_importing_flowlake() -> None:
    code = (
        "import sys, fsspec; cls = fsspec.get_filesystem_class('flowlake'); "
        "print(cls.__module__, cls.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["store.url.filesystem", "FlowlakeFileSystem"]


# -- refs ---------------------------------------------------------------------------------------


def test_every_ref_spelling_reads_what_the_store_reads(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    exp, first = _published(lake)
    exp.write_bytes("data/a.txt", b"three")  # uncommitted
    head = lake.commit(exp.name)
    cases = {
        "main": b"two",
        "production/main": b"two",
        "exp": b"three",
        "user:tester/exp": b"three",
        "exp~1": b"one",
        "user:tester/exp~1": b"one",
        "v1": b"one",
        first.id: b"one",
        first.id[:12]: b"one",
        head.id: b"two",
    }
    for ref, expected in cases.items():
        assert fs.cat(f"flowlake://{ref}/data/a.txt") == expected, ref
        assert lake.read_bytes("data/a.txt", ref=ref) == expected, ref

    avery = lake.with_namespace("team:vision").branch("exp", source="main")
    avery.write_bytes("data/a.txt", b"vision")
    assert fs.cat("flowlake://team:vision/exp/data/a.txt") == b"vision"
    assert fs.cat("flowlake://exp/data/a.txt") == b"three"  # bare: the caller's namespace


def test_unknown_ref_or_missing_object_gets_the_store_error(
    lake: store.Lake, fs: FlowlakeFileSystem, storage_options: dict[str, Any]
) -> None:
    with pytest.raises(RefNotFoundError, match="nope"):
        fs.cat("flowlake://nope/data/a.txt")
    with pytest.raises(RefNotFoundError, match="nope"):
        fs.exists("flowlake://nope/data/a.txt")
    with pytest.raises(RefNotFoundError):
        fs.ls("flowlake://user:tester/nope/")
    with pytest.raises(ObjectNotFoundError):
        fs.info("flowlake://main/missing.txt")
    assert not fs.exists("flowlake://main/missing.txt")
    for detail in (True, False):
        with pytest.raises(FileNotFoundError):
            fs.ls("flowlake://main/missing", detail=detail)
    with pytest.raises(InvalidPathError):
        fs.cat("flowlake://main/data/../a.txt")
    with pytest.raises(InvalidNameError):
        fs.cat("flowlake:///a.txt")
    with pytest.raises(RefNotFoundError, match="nope"):
        pd.read_parquet("flowlake://nope/x.parquet", storage_options=storage_options)


def test_writes_to_a_tag_a_commit_an_ancestor_or_main_are_refused(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    exp, first = _published(lake)
    for ref in ("v1", first.id, first.id[:12], "exp~1", "user:tester/exp~1"):
        with pytest.raises(ReadOnlyRefError) as caught:
            fs.pipe(f"flowlake://{ref}/new.txt", b"x")
        assert isinstance(caught.value, PermissionError)
    with pytest.raises(ProtectedBranchError):
        fs.pipe("flowlake://main/new.txt", b"x")
    with pytest.raises(ProtectedBranchError), fs.open("flowlake://main/new.txt", "wb") as f:
        f.write(b"x")
    with pytest.raises(ReadOnlyRefError):
        fs.rm("flowlake://v1/data/a.txt")
    assert not lake.exists("new.txt", ref="main")
    assert exp.uncommitted() == []


# -- reads and writes ---------------------------------------------------------------------------


def test_writes_are_staged_uncommitted_on_the_branch(
    lake: store.Lake, fs: FlowlakeFileSystem, tmp_path: Path
) -> None:
    exp = lake.branch("exp")
    fs.pipe("flowlake://exp/a.txt", b"a")
    with fs.open("flowlake://exp/b.txt", "w") as f:
        f.write("b")
    (tmp_path / "c.txt").write_bytes(b"c")
    fs.put(str(tmp_path / "c.txt"), "flowlake://exp/c.txt")
    fs.cp("flowlake://exp/c.txt", "flowlake://exp/d.txt")
    fs.mv("flowlake://exp/d.txt", "flowlake://exp/moved/d.txt")
    assert [c.path for c in exp.uncommitted()] == ["a.txt", "b.txt", "c.txt", "moved/d.txt"]
    assert lake.log(exp.name, limit=1)[0].message == "Repository created"
    assert fs.cat("flowlake://exp/moved/d.txt") == b"c"
    fs.mv("flowlake://exp/moved", "flowlake://exp/again", recursive=True)
    assert fs.find("flowlake://exp/") == ["exp/a.txt", "exp/again/d.txt", "exp/b.txt", "exp/c.txt"]


def test_a_with_block_that_fails_stores_nothing(lake: store.Lake, fs: FlowlakeFileSystem) -> None:
    exp = lake.branch("exp")
    with pytest.raises(RuntimeError), fs.open("flowlake://exp/half.bin", "wb") as f:
        f.write(b"x" * (9 << 20))  # past one block: already spilled to a temporary file
        raise RuntimeError("writer died")
    assert exp.uncommitted() == []


def test_info_gives_size_content_hash_and_the_commit_read(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    exp, first = _published(lake)
    at_tag = fs.info("flowlake://v1/data/a.txt")
    assert at_tag["size"] == 3
    assert at_tag["commit"] == first.id
    assert at_tag["checksum"] == lake.stat("data/a.txt", ref="v1").checksum
    at_branch = fs.info("flowlake://exp/data/a.txt")
    assert at_branch["commit"] == lake.commit(exp.name).id
    assert fs.checksum("flowlake://v1/data/a.txt") == at_tag["checksum"]
    assert fs.ukey("flowlake://v1/data/a.txt") == at_tag["checksum"]
    fs.pipe("flowlake://exp/copy.txt", b"one")
    assert fs.checksum("flowlake://exp/copy.txt") == at_tag["checksum"]  # same bytes, same hash
    assert fs.info("flowlake://v1/data") == {"name": "v1/data", "size": 0, "type": "directory"}
    assert fs.info("flowlake://v1/")["commit"] == first.id


def test_reads_at_tags_are_cached_and_reads_at_branches_are_not(
    lake: store.Lake, fs: FlowlakeFileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    _published(lake)
    calls: list[str] = []
    stat = fs.lake.stat

    def counting(path: str, ref: str = "main") -> store.ObjectInfo:
        calls.append(ref)
        return stat(path, ref=ref)

    monkeypatch.setattr(fs.lake, "stat", counting)
    for _ in range(3):
        fs.size("flowlake://v1/data/a.txt")
        fs.size("flowlake://exp/data/a.txt")
    assert len(calls) == 4  # the tag once, the branch every time
    fs.invalidate_cache()
    fs.size("flowlake://v1/data/a.txt")
    assert len(calls) == 5


def test_filecache_and_blockcache_key_on_content(
    lake: store.Lake, fs: FlowlakeFileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.branch("exp")
    fs.pipe("flowlake://exp/w.bin", b"A" * 1000)
    cached = fsspec.filesystem(
        "filecache", fs=fs, cache_storage=str(tmp_path / "fc"), check_files=True
    )
    assert cached.cat("flowlake://exp/w.bin") == b"A" * 1000
    opened: list[str] = []
    stream = fs.lake.open
    monkeypatch.setattr(fs.lake, "open", lambda p, ref="main": opened.append(p) or stream(p, ref))
    fs.pipe("flowlake://exp/w.bin", b"A" * 1000)  # rewritten, same content
    assert cached.cat("flowlake://exp/w.bin") == b"A" * 1000
    assert opened == []  # still the cached copy
    fs.pipe("flowlake://exp/w.bin", b"B" * 1000)
    assert cached.cat("flowlake://exp/w.bin") == b"B" * 1000
    assert opened == ["w.bin"]

    blocks = fsspec.filesystem(
        "blockcache", fs=fs, cache_storage=str(tmp_path / "bc"), block_size=100
    )
    payload = bytes(range(256)) * 8
    fs.pipe("flowlake://exp/r.bin", payload)
    with blocks.open("flowlake://exp/r.bin", "rb") as f:
        f.seek(1500)
        assert f.read(10) == payload[1500:1510]
        f.seek(20)
        assert f.read(300) == payload[20:320]


def test_random_access_reads_verify_and_see_a_replaced_object(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    lake.branch("exp")
    payload = os.urandom(3 << 20)
    fs.pipe("flowlake://exp/r.bin", payload)
    with fs.open("flowlake://exp/r.bin", "rb", block_size=1 << 20) as f:
        assert f.read(10) == payload[:10]
        f.seek(-100, 2)
        assert f.read() == payload[-100:]
        f.seek(5)
        assert f.read(1 << 20) == payload[5 : 5 + (1 << 20)]
    with fs.open("flowlake://exp/r.bin", "rb", block_size=1 << 20) as f:
        assert f.read(10) == payload[:10]
        fs.pipe("flowlake://exp/r.bin", b"short")
        f.seek(-10, 2)
        with pytest.raises(ObjectChangedError):
            f.read()


# -- transactions -------------------------------------------------------------------------------


def _scratch_branches(lake: store.Lake) -> list[str]:
    listed = lake.branches(all_namespaces=True, include_scratch=True)
    return [b.name for b in listed if "-tx-" in b.name]


def test_transaction_commits_everything_written_as_one_commit(
    lake: store.Lake, fs: FlowlakeFileSystem, tmp_path: Path
) -> None:
    exp = lake.branch("exp")
    before = lake.commit(exp.name).id
    images = tmp_path / "images"
    (images / "cats").mkdir(parents=True)
    for i in range(3):
        (images / "cats" / f"{i}.png").write_bytes(bytes([i]) * 10)
    with fs.transaction(message="add images", metadata={"count": 3}):
        fs.put(str(images) + "/", "flowlake://exp/images/", recursive=True)
        fs.pipe("flowlake://exp/labels.csv", b"path,label\n")
        assert fs.find("flowlake://exp/images") == [f"exp/images/cats/{i}.png" for i in range(3)]
        assert not lake.exists("labels.csv", ref=exp.name)  # invisible until the commit
    head = lake.log(exp.name, limit=1)[0]
    assert (head.message, dict(head.metadata)) == ("add images", {"count": "3"})
    assert head.parents[0] == before
    assert sorted(c.path for c in lake.diff(before, head.id)) == [
        "images/cats/0.png",
        "images/cats/1.png",
        "images/cats/2.png",
        "labels.csv",
    ]
    assert exp.uncommitted() == []
    assert _scratch_branches(lake) == []


def test_transaction_that_fails_leaves_the_branch_untouched(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    exp = lake.branch("exp")
    before = lake.commit(exp.name).id
    with pytest.raises(RuntimeError), fs.transaction:
        fs.pipe("flowlake://exp/a.txt", b"a")
        f = fs.open("flowlake://exp/b.txt", "wb")
        f.write(b"b")
        raise RuntimeError("job failed")
    assert lake.commit(exp.name).id == before
    assert not fs.exists("flowlake://exp/a.txt")
    assert not fs.exists("flowlake://exp/b.txt")
    assert _scratch_branches(lake) == []
    with fs.transaction:
        pass  # nothing written: no commit
    assert lake.commit(exp.name).id == before

    with pytest.raises(ConflictError, match=r"a\.txt"), fs.transaction:
        fs.pipe("flowlake://exp/a.txt", b"from the transaction")
        exp.write_bytes("a.txt", b"from another writer")
        exp.commit("meanwhile")
    assert lake.read_bytes("a.txt", ref=exp.name) == b"from another writer"
    assert _scratch_branches(lake) == []


def test_transaction_refuses_main_a_dirty_branch_and_a_second_branch(
    lake: store.Lake, fs: FlowlakeFileSystem
) -> None:
    lake.branch("exp")
    lake.branch("other")
    with pytest.raises(ProtectedBranchError), fs.transaction:
        fs.pipe("flowlake://main/a.txt", b"a")
    with pytest.raises(InvalidArgumentError, match="one branch"), fs.transaction:
        fs.pipe("flowlake://exp/a.txt", b"a")
        fs.pipe("flowlake://other/a.txt", b"a")
    fs.pipe("flowlake://exp/staged.txt", b"s")
    with pytest.raises(DirtyBranchError), fs.transaction:
        fs.pipe("flowlake://exp/a.txt", b"a")
    assert _scratch_branches(lake) == []
    assert not lake.exists("a.txt", ref="main")


# -- libraries ----------------------------------------------------------------------------------


def test_pandas_pyarrow_and_duckdb_read_and_write_through_urls(
    lake: store.Lake, fs: FlowlakeFileSystem, storage_options: dict[str, Any]
) -> None:
    exp = lake.branch("exp")
    frame = pd.DataFrame({"x": range(100), "label": ["cat", "dog"] * 50})
    frame.to_parquet("flowlake://exp/data/train.parquet", storage_options=storage_options)
    frame.to_csv("flowlake://exp/data/train.csv", index=False, storage_options=storage_options)
    back = pd.read_parquet("flowlake://exp/data/train.parquet", storage_options=storage_options)
    pd.testing.assert_frame_equal(back, frame)
    csv = pd.read_csv("flowlake://exp/data/train.csv", storage_options=storage_options)
    pd.testing.assert_frame_equal(csv, frame)

    table = pa.table({"part": [1, 1, 2], "y": [0.5, 1.5, 2.5]})
    ds.write_dataset(table, "exp/parts", filesystem=fs, format="parquet")
    exp.commit("data")
    lake.tag("data-v1", exp.name)
    _, path = fsspec.core.url_to_fs("flowlake://data-v1/parts", **storage_options)
    assert ds.dataset(path, filesystem=fs, format="parquet").to_table().num_rows == 3

    con = duckdb.connect()
    con.register_filesystem(fs)
    count = con.sql("SELECT count(*) FROM 'flowlake://data-v1/data/train.parquet'").fetchall()
    assert count == [(100,)]
    total = con.sql("SELECT sum(y) FROM 'flowlake://data-v1/parts/*.parquet'").fetchall()
    assert total == [(4.5,)]
    con.sql(
        "COPY (SELECT label, count(*) AS n FROM 'flowlake://exp/data/train.parquet' GROUP BY 1) "
        "TO 'flowlake://exp/stats.parquet' (FORMAT parquet)"
    )
    assert [c.path for c in exp.uncommitted()] == ["stats.parquet"]
    assert sorted(lake.read_table("stats.parquet", ref=exp.name).column("n").to_pylist()) == [
        50,
        50,
    ]


# -- the filesystem object ----------------------------------------------------------------------


def test_lake_comes_from_flowlake_lake_and_is_never_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open(tmp_path / "lake").close()
    monkeypatch.setenv("FLOWLAKE_LAKE", str(tmp_path / "lake"))
    fs = FlowlakeFileSystem(skip_instance_cache=True)
    assert fs.lake.location == str(tmp_path / "lake")
    assert fs.ls("flowlake://main/") == []
    fs.close()
    with pytest.raises(LakeNotFoundError):
        FlowlakeFileSystem(lake=str(tmp_path / "absent"), skip_instance_cache=True)
    assert not (tmp_path / "absent").exists()


def test_filesystem_pickles_for_workers(embedded_lake: store.Lake) -> None:
    embedded_lake.branch("exp").write_bytes("a.txt", b"a")
    fs = FlowlakeFileSystem(lake=embedded_lake.location, skip_instance_cache=True)
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat("flowlake://exp/a.txt") == b"a"
    clone.close()
    fs.close()


def test_large_writes_and_reads_stay_in_bounded_memory(embedded_lake: store.Lake) -> None:
    embedded_lake.branch("exp")
    fs = FlowlakeFileSystem(lake=embedded_lake.location, skip_instance_cache=True)
    chunk = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        with fs.open("flowlake://exp/big.bin", "wb") as f:
            for _ in range(96):  # 96 MiB
                f.write(chunk)
        with fs.open("flowlake://exp/big.bin", "rb") as f:
            while f.read(1 << 20):
                pass
        with fs.open("flowlake://exp/big.bin", "rb") as f:  # footer first, as Parquet does
            f.seek(-8, 2)
            f.read()
            f.seek(0)
            assert f.read(1 << 20) == chunk
        _, peak = tracemalloc.get_traced_memory()
        assert fs.size("flowlake://exp/big.bin") == 96 << 20
    finally:
        tracemalloc.stop()
        fs.close()
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MiB"


def _worker_options(lake_access: Any) -> dict[str, Any]:
    """Options that open the lake in another process, which does not share this one's
    environment (Ray workers start before a test sets it)."""
    env = lake_access.env
    options: dict[str, Any] = {"lake": lake_access.location}
    if "LAKECTL_SERVER_ENDPOINT_URL" in env:
        options["endpoint"] = env["LAKECTL_SERVER_ENDPOINT_URL"]
        options["access_key_id"] = env["LAKECTL_CREDENTIALS_ACCESS_KEY_ID"]
        options["secret_access_key"] = env["LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"]
    if "FSSPEC_S3" in env:
        options["storage_options"] = json.loads(env["FSSPEC_S3"])
    return options


@pytest.mark.parametrize("lake", ["embedded", "lakefs"], indirect=True)
def test_ray_data_reads_a_parquet_folder_through_a_url(
    lake: store.Lake, lake_access: Any, ray_cluster: Any
) -> None:
    import ray.data

    exp = lake.branch("exp")
    for part in range(3):
        exp.write_table(f"data/part-{part}.parquet", pa.table({"x": [part] * 10}))
    exp.commit("parts")
    lake.tag("parts-v1", exp.name)
    fs, path = fsspec.core.url_to_fs("flowlake://parts-v1/data", **_worker_options(lake_access))
    dataset = ray.data.read_parquet(path, filesystem=fs)
    assert sorted(row["x"] for row in dataset.take_all()) == sorted([0, 1, 2] * 10)
    fs.close()
