"""Objects are written and refused alike on every backend (the ``lake`` fixture)."""

from __future__ import annotations

import io

import pytest

import store
from store import errors


def test_a_text_stream_is_refused_by_write_file_and_nothing_is_written(
    lake: store.Lake, tmp_path
) -> None:
    branch = lake.branch("exp")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("abc")
    with open(text_file) as opened:  # text mode
        for source in (io.StringIO("abc"), opened):
            with pytest.raises(errors.InvalidArgumentError, match="binary file object"):
                branch.write_file("notes.txt", source)  # type: ignore[arg-type]
    assert branch.uncommitted() == [] and not branch.exists("notes.txt")
    with open(text_file, "rb") as binary:
        assert branch.write_file("notes.txt", binary).size == 3
    assert branch.read_bytes("notes.txt") == b"abc"


def test_a_closed_lake_refuses_every_call(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a", b"1")
    other_view = lake.with_namespace("team:vision")  # shares the backend, so closes with it
    lake.close()
    for call in (
        lambda: lake.read_bytes("a", ref=branch.name),
        lambda: branch.write_bytes("b", b"2"),
        lambda: lake.list(branch.name),
        lambda: lake.branches(),
        lambda: branch.commit("c"),
        lambda: other_view.log("main"),
    ):
        with pytest.raises(errors.LakeClosedError, match="was closed: open it again"):
            call()
    lake.close()  # closing twice is harmless
