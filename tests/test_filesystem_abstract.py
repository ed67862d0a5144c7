"""fsspec's own conformance suite (``fsspec.tests.abstract``) on a flowlake branch, every backend.

The suite's paths are ``user:tester/fs-suite/...``: a namespace-qualified branch, the URL spelling
with the most parts. Folders are implicit on flowlake, as on object stores
(``supports_empty_directories`` is False). fsspec ships no abstract ``mv`` class (its mv tests
are local-only); ``tests/test_filesystem.py`` covers ``mv``. No test of the suite is skipped.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

import store
from store.url import FlowlakeFileSystem

BRANCH = "fs-suite"


class FlowlakeFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, lake: store.Lake, lake_access: Any) -> Iterator[FlowlakeFileSystem]:
        lake.branch(BRANCH)
        fs = FlowlakeFileSystem(lake=lake_access.location, skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_path(self) -> str:
        return f"user:tester/{BRANCH}"

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
