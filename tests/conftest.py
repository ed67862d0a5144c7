"""Shared fixtures: a fresh lake per test on every backend, and the real servers they need."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

import store

BACKENDS = ["embedded"]


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test acts as the same login, whatever machine it runs on."""
    monkeypatch.setenv("FLOWLAKE_USER", "tester")


@pytest.fixture(params=BACKENDS)
def lake(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[store.Lake]:
    """A new, empty lake in namespace ``user:tester`` on each backend."""
    if request.param == "embedded":
        opened = store.open(os.path.join(tmp_path, "lake"))
    else:
        server = request.getfixturevalue("lakefs_server")
        opened = server.open_lake(f"t-{uuid.uuid4().hex[:12]}")
    yield opened
    opened.close()


@pytest.fixture
def embedded_lake(tmp_path: os.PathLike[str]) -> Iterator[store.Lake]:
    """A new embedded lake (for behaviour only the embedded backend has: fsck, gc, crashes)."""
    opened = store.open(os.path.join(tmp_path, "lake"))
    yield opened
    opened.close()
