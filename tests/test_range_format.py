"""The embedded store's range format: versioned, round-trips, and old (JSON) trees still read."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.backends.embedded import layout, rangecodec
from store.backends.embedded.objects import ObjectStore
from store.backends.embedded.tree import Entry, RangeRef, TreeStore
from store.errors import CorruptObjectError, FormatVersionError

entries = st.builds(
    Entry,
    path=st.text(min_size=1, max_size=40),
    checksum=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(min_value=0, max_value=2**62),
    mtime_ns=st.integers(min_value=0, max_value=2**62),
    address=st.none() | st.text(min_size=1, max_size=80),
    inline=st.none() | st.binary(max_size=64),
)


@given(st.lists(entries, max_size=30))
@settings(max_examples=60, deadline=None)
def test_entries_round_trip_through_the_current_format(rows: list[Entry]) -> None:
    data = rangecodec.encode([e.row() for e in rows], rangecodec.ENTRY_SCHEMA)
    assert data.startswith(rangecodec.MAGIC + bytes([rangecodec.VERSION]))
    decoded = [Entry(*r) for r in rangecodec.decode(data, rangecodec.ENTRY_SCHEMA)]
    assert decoded == rows


@given(st.lists(entries, min_size=1, max_size=30), st.data())
@settings(max_examples=60, deadline=None)
def test_a_slice_of_a_table_encodes_to_the_same_bytes_as_its_rows(
    rows: list[Entry], data: st.DataObject
) -> None:
    start = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    stop = data.draw(st.integers(min_value=start + 1, max_value=len(rows)))
    table = rangecodec.decode_table(
        rangecodec.encode([e.row() for e in rows], rangecodec.ENTRY_SCHEMA),
        rangecodec.ENTRY_SCHEMA,
    )
    piece = rangecodec.encode_table(table.slice(start, stop - start))
    assert piece == rangecodec.encode([e.row() for e in rows[start:stop]], rangecodec.ENTRY_SCHEMA)


def test_metarange_round_trips() -> None:
    refs = [RangeRef("a" * 64, "a/1", "a/9", 3), RangeRef("b" * 64, "b/1", "b/2", 2)]
    data = rangecodec.encode(
        [(r.id, r.first, r.last, r.count) for r in refs], rangecodec.METARANGE_SCHEMA
    )
    assert [RangeRef(*r) for r in rangecodec.decode(data, rangecodec.METARANGE_SCHEMA)] == refs


def test_a_newer_format_version_is_refused_with_an_upgrade_hint() -> None:
    data = rangecodec.encode([], rangecodec.METARANGE_SCHEMA)
    newer = rangecodec.MAGIC + bytes([rangecodec.VERSION + 1]) + data[len(rangecodec.MAGIC) + 1 :]
    with pytest.raises(FormatVersionError, match="upgrade flowlake"):
        rangecodec.decode(newer, rangecodec.METARANGE_SCHEMA)


@pytest.mark.parametrize("data", [b"\x00garbage", rangecodec.MAGIC + b"\x02not arrow", b"[1, 2"])
def test_bytes_that_do_not_parse_are_reported_as_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptObjectError):
        rangecodec.decode(data, rangecodec.ENTRY_SCHEMA)


def _store_v1(objects: ObjectStore, rows: list) -> str:
    """Store rows the way flowlake wrote ranges before format version 2 (JSON)."""
    data = json.dumps(rows, separators=(",", ":")).encode()
    return objects.put_bytes(data, codec=layout.ZSTD).id


def test_trees_written_in_format_1_read_and_diff_against_new_trees(tmp_path: Path) -> None:
    objects = ObjectStore(fsspec.filesystem("file"), str(tmp_path / "objects"))
    trees = TreeStore(objects)
    inline = base64.b64encode(b"hello").decode()
    old_rows = [
        ["a.txt", "1" * 64, 5, 10, None, inline],
        ["b.bin", "2" * 64, 9000, 11, "22/22/" + "2" * 64, None],
    ]
    range_id = _store_v1(objects, old_rows)
    old_tree = _store_v1(objects, [[range_id, "a.txt", "b.bin", 2]])

    assert trees.get(old_tree, "a.txt") == Entry("a.txt", "1" * 64, 5, 10, None, b"hello")
    assert [e.path for e in trees.iter_entries(old_tree)] == ["a.txt", "b.bin"]

    changed = Entry("b.bin", "3" * 64, 1, 12, "33/33/" + "3" * 64)
    new_tree = trees.apply(old_tree, {"b.bin": changed, "c.txt": None})
    raw = objects.get_bytes(layout.address(new_tree, layout.ZSTD))
    assert raw.startswith(rangecodec.MAGIC)
    assert trees.get(new_tree, "a.txt") == trees.get(old_tree, "a.txt")
    assert set(trees.diff(old_tree, new_tree)) == {"b.bin"}


@given(
    st.sets(st.integers(min_value=0, max_value=5000), max_size=400),
    st.lists(st.integers(min_value=-5, max_value=5005), max_size=200),
)
@settings(max_examples=25, deadline=None)
def test_get_many_finds_exactly_what_get_finds(stored: set[int], asked: list[int]) -> None:
    objects = ObjectStore(fsspec.filesystem("memory"), f"/t{len(stored)}-{len(asked)}")
    trees = TreeStore(objects)
    tree = trees.build(Entry(f"p/{i:05d}", "0" * 64, i, 0) for i in sorted(stored))
    paths = [f"p/{i:05d}" for i in asked] + ["", "p/", "q"]
    expected = {p: e for p in paths if (e := trees.get(tree, p)) is not None}
    assert trees.get_many(tree, paths) == expected
