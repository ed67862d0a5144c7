"""``Lake.read_many``: several objects at one ref, verified like ``read_bytes``, everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import store
from store.errors import (
    BranchNotFoundError,
    CorruptObjectError,
    InvalidPathError,
    ObjectNotFoundError,
    RefNotFoundError,
)


def _files() -> dict[str, bytes]:
    files = {f"d/{i:03d}.bin": os.urandom(100 + i) for i in range(20)}
    files["d/big.bin"] = os.urandom(3 * 1024 * 1024)
    files["d/empty.bin"] = b""
    return files


def test_read_many_returns_every_distinct_path_as_read_bytes_does(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    files = _files()
    branch.write_many(list(files.items()))
    commit = branch.commit("files").id
    branch.write_bytes("d/000.bin", b"changed, not committed")
    paths = [*files, "d/001.bin", "d/001.bin"]
    assert lake.read_many(paths, commit) == files
    at_head = lake.read_many(paths, branch.name)
    assert at_head == {**files, "d/000.bin": b"changed, not committed"}
    assert at_head == {p: lake.read_bytes(p, branch.name) for p in files}


def test_read_many_of_no_paths_reads_nothing(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a.bin", b"a")
    assert lake.read_many([], branch.name) == {}
    assert lake.read_many(iter(()), branch.name) == {}  # type: ignore[arg-type]


def test_read_many_names_a_missing_path_and_returns_nothing(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_many([(f"d/{i}.bin", b"x" * i) for i in range(10)])
    branch.commit("files")
    paths = [f"d/{i}.bin" for i in range(10)]
    with pytest.raises(ObjectNotFoundError, match="d/missing.bin"):
        lake.read_many([*paths[:5], "d/missing.bin", *paths[5:]], branch.name)
    with pytest.raises((BranchNotFoundError, RefNotFoundError)):
        lake.read_many(paths, "no-such-branch")


def test_read_many_refuses_a_bad_path_before_reading(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a.bin", b"a")
    for bad in ("../a.bin", "/a.bin", "a//b", ""):
        with pytest.raises(InvalidPathError):
            lake.read_many(["a.bin", bad], branch.name)


def test_read_many_detects_bytes_changed_behind_the_lake(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    files = {f"m/{i}.bin": os.urandom(50_000) for i in range(3)}
    branch.write_many(list(files.items()))
    commit = branch.commit("models").id
    _damage(lake, "m/1.bin", commit)
    with pytest.raises(CorruptObjectError):
        lake.read_many(list(files), commit)
    assert lake.read_many(["m/0.bin", "m/2.bin"], commit) == {
        "m/0.bin": files["m/0.bin"],
        "m/2.bin": files["m/2.bin"],
    }


def _damage(lake: store.Lake, path: str, commit: str) -> None:
    """Overwrite the stored bytes of ``path`` at ``commit`` with other bytes of the same size."""
    inner = lake.backend._inner
    if hasattr(inner, "repository"):  # lakeFS: the blockstore file behind lakeFS's back
        raw = inner._sdk.objects_api.stat_object(inner.repository, commit, path)
        stored = Path(raw.physical_address.removeprefix("local://"))
        stored.write_bytes(b"X" * stored.stat().st_size)
        return
    entry = inner._entry(commit, path)
    full = inner.objects.full_path(entry.address)
    if inner.objects.is_local:
        blob = Path(full)
        data = bytearray(blob.read_bytes())
        data[100] ^= 0xFF
        os.chmod(blob, 0o644)
        blob.write_bytes(bytes(data))
    else:  # embedded over S3: the blob object replaced in its bucket
        data = bytearray(inner.objects.fs.cat_file(full))
        data[100] ^= 0xFF
        inner.objects.fs.pipe_file(full, bytes(data))
