"""lakeFS-specific behaviour of the lakeFS backend, against a real lakeFS server.

The shared contract is checked by the conformance suite; this file covers what only lakeFS has:
error translation of real server answers, protection rules, lakectl-style configuration,
streaming of large objects, checksum verification and the S3 gateway.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extras import import_extra
from lakefs_server import (
    LakeFSServer,
    client_for,
    new_repository,
    s3_storage_options,
)

lakefs_sdk = import_extra("lakefs_sdk", "lakefs")
import_extra("lakefs", "lakefs")

from store.backends.lakefs.backend import COMMITTER_KEY, LakeFSBackend  # noqa: E402
from store.backends.lakefs.errors import translate  # noqa: E402
from store.errors import (  # noqa: E402
    AlreadyExistsError,
    AmbiguousNameError,
    AmbiguousRefError,
    BackendUnavailableError,
    BranchNotFoundError,
    ConflictError,
    CorruptObjectError,
    DirtyBranchError,
    InvalidArgumentError,
    LakeNotFoundError,
    NothingToCommitError,
    NotInstalledError,
    ObjectNotFoundError,
    ProtectedBranchError,
    RefNotFoundError,
)

pytestmark = pytest.mark.lakefs
MiB = 1024 * 1024


@pytest.fixture
def server(lakefs_server: LakeFSServer) -> LakeFSServer:
    """The session's real lakeFS server (see tests/conftest.py)."""
    return lakefs_server


@pytest.fixture
def repo(server: LakeFSServer) -> str:
    return new_repository(server)


@pytest.fixture
def backend(server: LakeFSServer, repo: str) -> Iterator[LakeFSBackend]:
    b = LakeFSBackend(client_for(server), repo)
    yield b
    b.close()


def _commit_file(b: LakeFSBackend, branch: str, path: str, data: bytes, msg: str = "c") -> str:
    b.put(branch, path, io.BytesIO(data))
    return b.commit(branch, msg, {}, "tester").id


# -- the server helper ------------------------------------------------------------------------


def test_server_is_healthy_and_on_loopback(server: LakeFSServer) -> None:
    assert server.endpoint.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{server.endpoint}/_health", timeout=5) as resp:
        assert resp.status in (200, 204)
    assert server.process.poll() is None


def test_new_repository_starts_with_one_commit_on_main(server: LakeFSServer, repo: str) -> None:
    b = LakeFSBackend(client_for(server), repo)
    assert list(b.list_branches()) == ["main"]
    assert len(list(b.log(b.branch_head("main")))) == 1


# -- error translation of real answers ---------------------------------------------------------


def test_sdk_errors_become_store_errors(server: LakeFSServer, repo: str) -> None:
    sdk = client_for(server).sdk_client
    with pytest.raises(lakefs_sdk.ApiException) as raw:
        sdk.branches_api.get_branch(repo, "no-such-branch")
    translated = translate(raw.value, BranchNotFoundError)
    assert isinstance(translated, BranchNotFoundError)
    assert isinstance(translated, KeyError)
    assert "branch not found" in str(translated)


def test_conflicts_dirty_and_empty_merges(backend: LakeFSBackend) -> None:
    base = _commit_file(backend, "main", "f", b"base")
    backend.create_branch("other", base)
    _commit_file(backend, "other", "f", b"theirs")
    _commit_file(backend, "main", "f", b"ours")
    with pytest.raises(ConflictError) as conflict:
        backend.merge("other", "main", None, "m", {}, "t")
    assert conflict.value.conflicts == []
    assert backend.open_read("main", "f").read() == b"ours"

    backend.put("main", "dirt", io.BytesIO(b"x"))
    with pytest.raises(DirtyBranchError):
        backend.merge("other", "main", "source-wins", "m", {}, "t")
    backend.reset("main")

    merged = backend.merge("other", "main", "source-wins", "m", {}, "t")
    assert backend.open_read(merged.id, "f").read() == b"theirs"
    with pytest.raises(NothingToCommitError):
        backend.merge("other", "main", None, "again", {}, "t")
    with pytest.raises(InvalidArgumentError):
        backend.merge("other", "main", "ours", "m", {}, "t")  # type: ignore[arg-type]


def test_dest_wins_keeps_destination(backend: LakeFSBackend) -> None:
    base = _commit_file(backend, "main", "f", b"base")
    backend.create_branch("other", base)
    _commit_file(backend, "other", "f", b"theirs")
    backend.put("other", "g", io.BytesIO(b"new"))
    backend.commit("other", "g", {}, "t")
    _commit_file(backend, "main", "f", b"ours")
    merged = backend.merge("other", "main", "dest-wins", "m", {}, "t")
    assert backend.open_read(merged.id, "f").read() == b"ours"
    assert backend.open_read(merged.id, "g").read() == b"new"


def test_not_found_and_exists_errors(backend: LakeFSBackend) -> None:
    head = backend.branch_head("main")
    with pytest.raises(BranchNotFoundError):
        backend.branch_head("nope")
    with pytest.raises(BranchNotFoundError):
        backend.put("nope", "x", io.BytesIO(b"x"))
    with pytest.raises(BranchNotFoundError):
        backend.commit("nope", "m", {}, "t")
    with pytest.raises(BranchNotFoundError):
        list(backend.uncommitted("nope"))
    with pytest.raises(BranchNotFoundError):
        backend.delete_branch("nope")
    with pytest.raises(ObjectNotFoundError) as missing:
        backend.stat("main", "nothing")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(ObjectNotFoundError):
        backend.open_read("main", "nothing")
    with pytest.raises(RefNotFoundError) as ref_missing:
        backend.stat("no-such-ref", "x")
    assert not isinstance(ref_missing.value, ObjectNotFoundError)
    with pytest.raises(RefNotFoundError):
        backend.create_branch("b", "f" * 64)
    backend.create_branch("b", head)
    with pytest.raises(AlreadyExistsError):
        backend.create_branch("b", head)
    backend.create_tag("v1", head)
    with pytest.raises(AlreadyExistsError):
        backend.create_tag("v1", head)
    with pytest.raises(RefNotFoundError):
        backend.create_tag("v2", "e" * 64)
    with pytest.raises(RefNotFoundError):
        backend.delete_tag("v9")
    with pytest.raises(RefNotFoundError):
        backend.get_commit("main")  # a branch is not a commit id
    with pytest.raises(ProtectedBranchError):
        backend.delete_branch("main")  # lakeFS refuses to delete the default branch


def test_unreachable_server_is_backend_unavailable(server: LakeFSServer) -> None:
    import lakefs

    dead = lakefs.Client(host="http://127.0.0.1:9", username="a", password="b")
    dead.config.retries = 0
    with pytest.raises(BackendUnavailableError):
        LakeFSBackend(dead, "r").list_branches()


def test_delete_is_all_or_nothing(backend: LakeFSBackend) -> None:
    _commit_file(backend, "main", "keep", b"1")
    with pytest.raises(ObjectNotFoundError):
        backend.delete("main", ["keep", "missing"])
    assert list(backend.uncommitted("main")) == []
    backend.delete("main", ["keep"])
    assert [(c.path, str(c.kind)) for c in backend.uncommitted("main")] == [("keep", "removed")]


# -- protection rules ------------------------------------------------------------------------


def test_protection_is_a_lakefs_rule(server: LakeFSServer, backend: LakeFSBackend) -> None:
    head = _commit_file(backend, "main", "f", b"v1")
    backend.create_branch("feature", head)
    _commit_file(backend, "feature", "f", b"v2")
    backend.protect_branch("main")

    rules = client_for(server).sdk_client.repositories_api.get_branch_protection_rules(
        backend.repository
    )
    assert [r.pattern for r in rules] == ["main"]
    assert backend.protected_branches() == {"main"}

    with pytest.raises(ProtectedBranchError):
        backend.put("main", "x", io.BytesIO(b"x"))
    with pytest.raises(ProtectedBranchError):
        backend.put_many("main", [("y", b"y")])
    with pytest.raises(ProtectedBranchError):
        backend.delete("main", ["f"])
    with pytest.raises(ProtectedBranchError):
        backend.delete_branch("main")
    with pytest.raises(ProtectedBranchError):
        backend.commit("main", "m", {}, "t")
    backend.reset("main")  # nothing to drop: allowed

    merged = backend.merge("feature", "main", None, "ship", {}, "t")
    assert backend.branch_head("main") == merged.id
    reverted = backend.revert("main", merged.id, "t")
    assert reverted.parents == (merged.id,)
    assert backend.open_read("main", "f").read() == b"v1"

    backend.protect_branch("main")  # idempotent
    assert backend.protected_branches() == {"main"}
    with pytest.raises(BranchNotFoundError):
        backend.protect_branch("nope")


# -- configuration ---------------------------------------------------------------------------


def _clear_lakectl_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LAKECTL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))


def test_config_from_lakectl_env(
    server: LakeFSServer, repo: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_lakectl_env(monkeypatch, tmp_path)
    monkeypatch.setenv("LAKECTL_SERVER_ENDPOINT_URL", server.endpoint + "/api/v1")
    monkeypatch.setenv("LAKECTL_CREDENTIALS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY", server.secret_access_key)
    b = LakeFSBackend.from_config(repo)
    assert b.settings.endpoint == server.endpoint
    assert "main" in b.list_branches()


def test_config_from_lakectl_yaml_and_explicit_wins(
    server: LakeFSServer, repo: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_lakectl_env(monkeypatch, tmp_path)
    (tmp_path / ".lakectl.yaml").write_text(
        "credentials:\n"
        f"  access_key_id: {server.access_key_id}\n"
        f"  secret_access_key: {server.secret_access_key}\n"
        "server:\n"
        "  endpoint_url: http://127.0.0.1:9/api/v1\n"
    )
    # The endpoint in the file is dead; the explicit one must win, the keys come from the file.
    b = LakeFSBackend.from_config(repo, endpoint=server.endpoint)
    assert "main" in b.list_branches()
    monkeypatch.setenv("LAKECTL_SERVER_ENDPOINT_URL", server.endpoint)
    assert "main" in LakeFSBackend.from_config(repo).list_branches()


def test_config_missing_and_repository_creation(
    server: LakeFSServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_lakectl_env(monkeypatch, tmp_path)
    with pytest.raises(InvalidArgumentError, match="LAKECTL_SERVER_ENDPOINT_URL"):
        LakeFSBackend.from_config("r")
    keys: dict[str, Any] = {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
    }
    with pytest.raises(LakeNotFoundError):
        LakeFSBackend.from_config("fresh-repo", **keys)
    with pytest.raises(InvalidArgumentError, match="storage_namespace"):
        LakeFSBackend.from_config("fresh-repo", create=True, **keys)
    b = LakeFSBackend.from_config(
        "fresh-repo", create=True, storage_namespace="local://fresh-repo", **keys
    )
    assert list(b.list_branches()) == ["main"]
    again = LakeFSBackend.from_config("fresh-repo", create=True, storage_namespace="x", **keys)
    assert again.list_branches() == b.list_branches()


def test_missing_package_says_which_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['lakefs'] = None\n"
        "try:\n"
        "    import store.backends.lakefs.backend\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("NotInstalledError")
    assert "pip install 'flowlake[lakefs]'" in out


def test_missing_lakefs_package_is_one_clean_sentence_from_store_open(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['lakefs'] = None\n"
        "import store\n"
        "try:\n"
        "    store.open('lakefs://repo', endpoint='http://127.0.0.1:1')\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == (
        "NotInstalledError the lakeFS backend needs the 'lakefs' and 'lakefs-sdk' packages: "
        "pip install 'flowlake[lakefs]'"
    )


def test_a_backend_missing_a_plain_package_names_it_and_the_extra_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from store import backends

    monkeypatch.setitem(backends.REGISTRY, "fake", ("flowlake_no_such_module:make", "fake"))
    with pytest.raises(NotInstalledError) as info:
        backends.load_backend("fake")
    assert str(info.value) == (
        "backend 'fake' needs the package 'flowlake_no_such_module', which is not installed: "
        "pip install 'flowlake[fake]'"
    )


# -- commits ---------------------------------------------------------------------------------


def test_commit_round_trip_is_exact(server: LakeFSServer, backend: LakeFSBackend) -> None:
    backend.put("main", "a", io.BytesIO(b"a"))
    parent = backend.branch_head("main")
    made = backend.commit("main", "first line\n\nbody", {"run": "42", "é": "ü"}, "user:avery")
    read = backend.get_commit(made.id)
    for c in (made, read):
        assert (c.message, dict(c.metadata), c.parents, c.committer) == (
            "first line\n\nbody",
            {"run": "42", "é": "ü"},
            (parent,),
            "user:avery",
        )
    assert made.timestamp == read.timestamp
    assert made.timestamp.tzinfo is not None
    raw = client_for(server).sdk_client.commits_api.get_commit(backend.repository, made.id)
    assert raw.metadata[COMMITTER_KEY] == "user:avery"  # stored server-side, hidden on read

    backend.put("main", "b", io.BytesIO(b"b"))
    empty = backend.commit("main", "", {}, "x")
    assert backend.get_commit(empty.id).message == ""
    with pytest.raises(InvalidArgumentError):
        backend.commit("main", "m", {"flowlake.committer": "spoof"}, "x")


def test_merge_commit_metadata_and_log(backend: LakeFSBackend) -> None:
    base = _commit_file(backend, "main", "f", b"1")
    backend.create_branch("side", base)
    side = _commit_file(backend, "side", "g", b"2")
    main = _commit_file(backend, "main", "h", b"3")
    merged = backend.merge("side", "main", None, "merge", {"k": "v"}, "merger")
    assert dict(merged.metadata) == {"k": "v"}  # lakeFS's .lakefs.merge.strategy is hidden
    assert merged.parents == (main, side)
    assert merged.committer == "merger"
    log = [c.id for c in backend.log(merged.id)]
    assert log[0] == merged.id
    assert len(log) == len(set(log)) == 5
    assert log.index(main) < log.index(base) and log.index(side) < log.index(base)
    assert backend.merge_base(side, main) == base


def test_revert_merge_commit_uses_first_parent(backend: LakeFSBackend) -> None:
    base = _commit_file(backend, "main", "f", b"1")
    backend.create_branch("side", base)
    _commit_file(backend, "side", "g", b"2")
    merged = backend.merge("side", "main", None, "merge", {}, "t")
    reverted = backend.revert("main", merged.id, "reverter")
    assert reverted.committer == "reverter"
    assert [o.path for o in backend.list_objects(reverted.id)] == ["f"]
    backend.put("main", "dirty", io.BytesIO(b"x"))
    with pytest.raises(DirtyBranchError):
        backend.revert("main", base, "t")


def test_resolve_names_ids_prefixes_and_ambiguity(
    backend: LakeFSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [_commit_file(backend, "main", "f", b"%d" % i) for i in range(17)]
    backend.create_tag("release-1.0", ids[0])
    assert backend.resolve("main") == ids[-1]
    assert backend.resolve("release-1.0") == ids[0]
    assert backend.resolve(ids[3]) == ids[3]
    assert backend.resolve(ids[3][:12]) == ids[3]
    # 18 commits (with the initial one) over 16 hex digits: two share a first digit.
    everything = [c.id for c in backend.log(ids[-1])]
    shared = next(p[:1] for p in everything if sum(c.startswith(p[:1]) for c in everything) > 1)
    with pytest.raises(RefNotFoundError):  # under 4 digits: not a commit id prefix
        backend.resolve(shared)
    # The ambiguity check itself, with prefixes of one digit allowed (a 4-digit clash would
    # take hundreds of commits).
    monkeypatch.setattr("store.backends.lakefs.backend.MIN_COMMIT_PREFIX", 1)
    with pytest.raises(AmbiguousRefError):
        backend.resolve(shared)
    for missing in ("nope", "0" * 64, "main~1", "main@", "a..b"):
        with pytest.raises(RefNotFoundError):
            backend.resolve(missing)


# -- streaming and integrity -----------------------------------------------------------------


class _Pattern(io.RawIOBase):
    """A non-seekable stream of ``size`` generated bytes (no file behind it)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.md5 = hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        chunk = (b"flowlake" * (n // 8 + 1))[:n]
        buffer[:n] = chunk
        self.md5.update(chunk)
        self.left -= n
        return n


def test_put_streams_200_mb_without_buffering(backend: LakeFSBackend, tmp_path: Path) -> None:
    size = 200 * MiB
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(200):
            f.write(bytes([i]) * MiB)
    tracemalloc.start()
    try:
        with open(big, "rb") as f:
            info = backend.put("main", "big/file.bin", f)
        file_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        stream = _Pattern(size)
        streamed = backend.put("main", "big/stream.bin", io.BufferedReader(stream, MiB))
        stream_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        digest = hashlib.md5()
        with backend.open_read("main", "big/stream.bin") as reader:
            while chunk := reader.read(MiB):
                digest.update(chunk)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.size == streamed.size == size
    assert streamed.checksum == stream.md5.hexdigest() == digest.hexdigest()
    assert max(file_peak, stream_peak, read_peak) < 32 * MiB, (file_peak, stream_peak, read_peak)


def test_put_many_and_listing(backend: LakeFSBackend) -> None:
    items = [(f"many/{i:04d}", b"%d" % i) for i in range(300)]
    assert backend.put_many("main", iter(items)) == 300
    listed = list(backend.list_objects("main", "many/"))
    assert [o.path for o in listed] == [p for p, _ in items]
    assert backend.stat("main", "many/0007").size == 1


def test_corrupted_bytes_are_detected(backend: LakeFSBackend) -> None:
    backend.put("main", "c.bin", io.BytesIO(b"0123456789" * 1000))
    raw = backend._sdk.objects_api.stat_object(backend.repository, "main", "c.bin")
    stored = Path(raw.physical_address.removeprefix("local://"))
    stored.write_bytes(b"X" * 10_000)  # the blockstore file changes behind lakeFS's back
    with pytest.raises(CorruptObjectError), backend.open_read("main", "c.bin") as reader:
        reader.read()


# -- S3 gateway ------------------------------------------------------------------------------


def test_s3fs_reads_and_writes_through_gateway(server: LakeFSServer, repo: str) -> None:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**s3_storage_options(server))
    fs.pipe(f"{repo}/main/objects/small", b"tiny")
    big = os.urandom(12 * MiB)
    with fs.open(f"{repo}/main/objects/multipart", "wb", block_size=5 * MiB) as f:
        f.write(big)  # several parts: exercises the gateway's multipart upload
    assert fs.cat(f"{repo}/main/objects/small") == b"tiny"
    assert fs.cat(f"{repo}/main/objects/multipart") == big
    assert sorted(fs.ls(f"{repo}/main/objects/", detail=False)) == [
        f"{repo}/main/objects/multipart",
        f"{repo}/main/objects/small",
    ]
    fs.rm(f"{repo}/main/objects/small")
    assert not fs.exists(f"{repo}/main/objects/small")

    backend = LakeFSBackend(client_for(server), repo)
    assert [c.path for c in backend.uncommitted("main")] == ["objects/multipart"]
    # A gateway multipart upload's checksum looks like an MD5 but is not the bytes' MD5: such
    # objects must read back without a false CorruptObjectError.
    assert backend.stat("main", "objects/multipart").checksum != hashlib.md5(big).hexdigest()
    with backend.open_read("main", "objects/multipart") as reader:
        assert reader.read() == big
    head = backend.commit("main", "via s3", {}, "t").id
    assert fs.cat(f"{repo}/{head}/objects/multipart") == big  # a commit id is a key prefix too


def test_duckdb_reads_gateway_paths(server: LakeFSServer, repo: str) -> None:
    s3fs = pytest.importorskip("s3fs")
    duckdb = pytest.importorskip("duckdb")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    backend = LakeFSBackend(client_for(server), repo, gateway_paths=True)
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2, 3]}), buf)
    buf.seek(0)
    backend.put("main", "tables/t.parquet", buf)
    assert LakeFSBackend(client_for(server), repo).local_path("main", "tables/t.parquet") is None
    url = backend.local_path("main", "tables/t.parquet")
    assert url == f"s3://{repo}/main/tables/t.parquet"
    con = duckdb.connect()
    con.register_filesystem(s3fs.S3FileSystem(**backend.s3_storage_options()))
    assert con.sql(f"select sum(x) from read_parquet('{url}')").fetchall() == [(6,)]


def test_storage_options_are_plain_json(server: LakeFSServer) -> None:
    options = s3_storage_options(server)
    assert json.loads(json.dumps(options)) == options
    assert options["endpoint_url"] == server.endpoint


# -- names -------------------------------------------------------------------------------------


def test_branches_made_outside_flowlake_are_listed_addressed_and_queried(
    server: LakeFSServer, repo: str, tmp_path: Path
) -> None:
    """lakectl or the lakeFS UI can make branches flowlake's encoding never produces."""
    from typer.testing import CliRunner

    import tracking
    from ui.cli import app

    sdk = client_for(server).sdk_client
    foreign = ["_scratch", "u-avery__a__b", "dev__old"]
    for name in foreign:
        sdk.branches_api.create_branch(repo, lakefs_sdk.BranchCreation(name=name, source="main"))
    sdk.objects_api.upload_object(repo, "dev__old", "notes.txt", content=b"work in progress")
    lake = server.open_lake(repo)
    try:
        listed = {b.name: b.namespace for b in lake.branches()}
        assert {name: listed.get(name) for name in foreign} == dict.fromkeys(foreign, "production")
        old = lake.get_branch("dev__old")
        assert [c.path for c in old.uncommitted()] == ["notes.txt"]
        assert lake.read_bytes("notes.txt", ref="dev__old") == b"work in progress"
        assert lake.exists("notes.txt", ref="production/dev__old")
        exp = lake.branch("exp")
        with tracking.start_run(lake, branch=exp.name, name="beside-foreign") as run:
            run.log_metric("loss", 0.5, step=1)
        assert tracking.sql(lake, "SELECT run_id FROM runs").column(0).to_pylist() == [run.id]
        env = {
            "LAKECTL_SERVER_ENDPOINT_URL": server.endpoint,
            "LAKECTL_CREDENTIALS_ACCESS_KEY_ID": server.access_key_id,
            "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY": server.secret_access_key,
            "FLOWLAKE_LAKE": f"lakefs://{repo}",
        }
        for args, expected in (
            (["runs"], "1 run(s)"),
            (["sql", "SELECT run_id FROM runs", "--json"], run.id),
        ):
            result = CliRunner().invoke(app, args, env=env)
            assert result.exit_code == 0 and expected in result.output, result.output
        for name in foreign:
            lake.delete_branch(name)
        assert not set(foreign) & {b.name for b in lake.branches()}
    finally:
        lake.close()


def test_lakefs_refusals_of_clashing_names_become_name_errors(backend: LakeFSBackend) -> None:
    head = backend.branch_head("main")
    backend.create_tag("v1", head)
    with pytest.raises(AmbiguousNameError):
        backend.create_branch("v1", head)
    with pytest.raises(AmbiguousNameError):
        backend.create_tag("main", head)


def test_two_or_three_hex_digits_are_names_not_commit_prefixes(backend: LakeFSBackend) -> None:
    # lakeFS itself would take them as commit id prefixes; flowlake wants 4 digits everywhere.
    head = _commit_file(backend, "main", "f", b"1")
    for length in (2, 3):
        with pytest.raises(RefNotFoundError):
            backend.resolve(head[:length])
    backend.create_branch("abc", head)
    assert backend.resolve("abc") == head
    assert backend.resolve(head[:4]) == head
