"""Shared fixtures: a fresh lake per test on every backend, and the real servers they need.

Backends of the ``lake`` fixture:

* ``embedded``: a lake in a temporary folder.
* ``embedded-s3``: the same, with its objects on S3 through s3fs (the real lakeFS server's S3
  gateway serves the S3 API), proving the fsspec object-location path.
* ``lakefs``: a fresh repository on a real lakeFS server, built from the Go module proxy by
  ``scripts/build-lakefs.sh`` and started once per session.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import store

BACKENDS = ["embedded", "embedded-s3", "lakefs"]


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test acts as the same login, whatever machine it runs on."""
    monkeypatch.setenv("FLOWLAKE_USER", "tester")


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Local caches (the tracking index) live under the test session's temporary folder."""
    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def lakefs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real lakeFS server per session (skipped without Go outside CI; fails under CI)."""
    from lakefs_server import start_lakefs_or_skip

    server = start_lakefs_or_skip(tmp_path_factory.mktemp("lakefs"))
    yield server
    server.stop()


def open_lake(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> store.Lake:
    """A new, empty lake of backend ``kind`` in namespace ``user:tester``."""
    if kind == "embedded":
        return store.open(tmp_path / "lake")
    from lakefs_server import new_repository, s3_storage_options

    server = request.getfixturevalue("lakefs_server")
    if kind == "embedded-s3":
        bucket = new_repository(server)
        return store.open(
            tmp_path / "lake",
            objects=f"s3://{bucket}/main/objects",
            storage_options=s3_storage_options(server),
        )
    return server.open_lake(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=BACKENDS)
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[store.Lake]:
    """A new, empty lake in namespace ``user:tester`` on each backend."""
    opened = open_lake(request.param, tmp_path, request)
    yield opened
    opened.close()


@pytest.fixture
def embedded_lake(tmp_path: os.PathLike[str]) -> Iterator[store.Lake]:
    """A new embedded lake (for behaviour only the embedded backend has: fsck, gc, crashes)."""
    opened = store.open(Path(tmp_path) / "lake")
    yield opened
    opened.close()


@dataclass(frozen=True)
class LakeAccess:
    """How another process (or the CLI) opens the same lake: ``store.open(location)`` with
    ``env`` set. The fixture also sets it in this process."""

    location: str
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def lake_access(
    lake: store.Lake, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> LakeAccess:
    """The ``lake`` fixture's lake as configuration only: lakeFS through the ``LAKECTL_*``
    variables, objects on S3 through fsspec's ``FSSPEC_S3`` configuration."""
    kind = request.node.callspec.params["lake"]
    env: dict[str, str] = {}
    if kind != "embedded":
        from lakefs_server import s3_storage_options

        server = request.getfixturevalue("lakefs_server")
        if kind == "lakefs":
            env = {
                "LAKECTL_SERVER_ENDPOINT_URL": server.endpoint,
                "LAKECTL_CREDENTIALS_ACCESS_KEY_ID": server.access_key_id,
                "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY": server.secret_access_key,
            }
        else:
            import fsspec.config

            options = s3_storage_options(server)
            env = {"FSSPEC_S3": json.dumps(options)}
            monkeypatch.setitem(fsspec.config.conf, "s3", options)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return LakeAccess(lake.location, env)


@pytest.fixture
def declared_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private lease ledger and a declared machine (4 GPUs, 8 CPUs), so compute tests never
    see each other's jobs nor depend on this machine's hardware."""
    monkeypatch.setenv("FLOWLAKE_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("FLOWLAKE_GPUS", "0,1,2,3")
    monkeypatch.setenv("FLOWLAKE_CPUS", "8")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One real local Ray instance per session, with 4 declared (fake) GPUs and 2 CPUs."""
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()
