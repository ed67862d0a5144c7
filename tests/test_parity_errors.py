"""What goes wrong is raised and worded alike on every backend (the ``lake`` fixture): the same
class, and a message that names the object or branch, whatever the backend's own text was.

Each test tries several calls on one lake (a lake per call would cost a repository each)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

import store
from store import errors

_PROTECTED = r"^branch 'main' is protected: change it by merging into it$"


def _each_raises(calls: dict[str, Callable[[], Any]], error: type[Exception], pattern: str) -> None:
    """Every call raises ``error`` with a message matching ``pattern`` (failures name the call)."""
    for name, call in calls.items():
        try:
            call()
        except error as exc:
            assert re.search(pattern, str(exc)), f"{name}: {exc}"
        else:
            pytest.fail(f"{name} raised nothing")


def test_a_missing_object_is_named_by_every_read(lake: store.Lake) -> None:
    reads = {
        "read_bytes": lambda: lake.read_bytes("nope.txt"),
        "open": lambda: lake.open("nope.txt"),
        "read_table": lambda: lake.read_table("nope.txt"),
        "read_many": lambda: lake.read_many(["nope.txt"]),
        "stat": lambda: lake.stat("nope.txt"),
        "locate": lambda: lake.locate("nope.txt"),
    }
    _each_raises(reads, errors.ObjectNotFoundError, r"^no object 'nope.txt' in 'main'$")


def test_reading_a_folder_as_an_object_names_it(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("d/x", b"1")
    with pytest.raises(errors.ObjectNotFoundError, match=rf"^no object 'd' in '{branch.name}'$"):
        branch.read_bytes("d")
    assert not branch.exists("d")


def test_protected_main_refuses_every_change_alike(lake: store.Lake) -> None:
    feature = lake.branch("feature")
    feature.write_bytes("kept", b"1")
    feature.commit("kept")
    lake.merge(feature.name, into="main")
    main = lake.get_branch("main")
    writes = {
        "write_bytes": lambda: main.write_bytes("a", b"1"),
        "write_many": lambda: main.write_many([("a", b"1"), ("b", b"2")]),
        "write_file": lambda: main.write_file("a", io.BytesIO(b"1")),
        "write_table": lambda: main.write_table("t.parquet", pa.table({"x": [1]})),
        "commit_writes": lambda: main.commit("m", writes={"a": b"1"}),
        "commit": lambda: main.commit("m"),
        "delete a missing path": lambda: main.delete("missing"),
        "delete": lambda: main.delete("kept"),
        "delete with a missing path": lambda: main.delete("kept", "missing"),
    }
    _each_raises(writes, errors.ProtectedBranchError, _PROTECTED)
    assert [o.path for o in lake.list("main")] == ["kept"] and main.uncommitted() == []


def test_a_deleted_branch_is_named_by_every_call(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    lake.delete_branch(branch.name)
    calls = {
        "write_bytes": lambda: branch.write_bytes("a", b"1"),
        "write_many": lambda: branch.write_many([("a", b"1"), ("b", b"2")]),
        "commit": lambda: branch.commit("m"),
        "uncommitted": lambda: branch.uncommitted(),
        "reset": lambda: branch.reset(),
        "head": lambda: branch.head(),
        "list": lambda: branch.list(),
        "read_bytes": lambda: branch.read_bytes("a"),
        "delete": lambda: branch.delete("a"),
    }
    _each_raises(calls, errors.BranchNotFoundError, rf"^branch '{branch.name}' does not exist$")


def test_a_missing_path_in_a_delete_is_named_and_nothing_is_deleted(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a", b"1")
    branch.commit("a")
    with pytest.raises(errors.ObjectNotFoundError, match=rf"^no object 'b' in '{branch.name}'$"):
        branch.delete("a", "b")
    assert branch.exists("a") and branch.uncommitted() == []


def test_a_dirty_destination_is_named(lake: store.Lake) -> None:
    feature = lake.branch("feature")
    feature.write_bytes("a", b"1")
    feature.commit("a")
    target = lake.branch("target")
    target.write_bytes("b", b"1")
    bad = target.commit("b")
    target.write_bytes("dirty", b"d")
    dirty = rf"^branch '{target.name}' has uncommitted changes$"
    calls = {
        "merge": lambda: lake.merge(feature.name, into=target.name),
        "revert": lambda: lake.revert(target.name, bad.id),
    }
    _each_raises(calls, errors.DirtyBranchError, dirty)
