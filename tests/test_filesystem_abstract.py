"""fsspec's own conformance suite (``fsspec.tests.abstract``) on a flowlake branch, every backend.

One lake per backend serves the whole module and every test gets a fresh branch (branches are
O(1)), which keeps the suite's time in the filesystem rather than in making lakes. The suite's
paths are ``user:tester/<branch>/...``: a namespace-qualified branch, the URL spelling with the
most parts. Folders are implicit on flowlake, as on object stores (``supports_empty_directories``
is False). fsspec ships no abstract ``mv`` class (its mv tests are local-only);
``tests/test_filesystem.py`` covers ``mv``. No test of the suite is skipped.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import BACKENDS, open_lake
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from store.url import FlowlakeFileSystem


@pytest.fixture(scope="module", params=BACKENDS)
def suite_fs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowlakeFileSystem]:
    """A filesystem on a new lake of each backend, opened from its location and connection
    options as a user would (not from the test's environment: module fixtures outlive it)."""
    kind = request.param
    lake = open_lake(kind, tmp_path_factory.mktemp(kind), request)
    options: dict[str, Any] = {"lake": lake.location, "user": "tester"}
    if kind != "embedded":
        from lakefs_server import s3_storage_options

        server = request.getfixturevalue("lakefs_server")
        if kind == "lakefs":
            options.update(
                endpoint=server.endpoint,
                access_key_id=server.access_key_id,
                secret_access_key=server.secret_access_key,
            )
        else:
            options["storage_options"] = s3_storage_options(server)
    fs = FlowlakeFileSystem(skip_instance_cache=True, **options)
    yield fs
    fs.close()
    lake.close()


@pytest.fixture
def suite_branch(suite_fs: FlowlakeFileSystem) -> str:
    """A fresh branch for one test, as its namespace-qualified name."""
    return suite_fs.lake.branch(f"suite-{uuid.uuid4().hex[:10]}").name


class FlowlakeFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, suite_fs: FlowlakeFileSystem) -> FlowlakeFileSystem:
        return suite_fs

    @pytest.fixture
    def fs_path(self, suite_branch: str) -> str:
        return suite_branch

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class TestCopy(FlowlakeFixtures, AbstractCopyTests):  # type: ignore[misc]
    pass


class TestGet(FlowlakeFixtures, AbstractGetTests):  # type: ignore[misc]
    pass


class TestPut(FlowlakeFixtures, AbstractPutTests):  # type: ignore[misc]
    pass


class TestOpen(FlowlakeFixtures, AbstractOpenTests):  # type: ignore[misc]
    pass


class TestPipe(FlowlakeFixtures, AbstractPipeTests):  # type: ignore[misc]
    pass
