"""The bytes of ranges and metaranges: a versioned format, the one place that reads or writes it.

A range lists tree entries; a metarange lists ranges. Both are stored as content-addressed
objects (zstd-compressed by the object store). Formats, told apart by their first bytes:

* version 1 (lakes written before 2026-11-29): JSON, a list of rows. It begins with ``[``.
  Entry rows are ``[path, checksum, size, mtime_ns, address, base64 inline or null]``,
  metarange rows ``[range id, first path, last path, entry count]``.
* version 2 (written now): ``MAGIC`` + one version byte, then an Arrow IPC stream of one record
  batch with the columns of :data:`ENTRY_SCHEMA` or :data:`METARANGE_SCHEMA`. Columnar, so a
  million-entry commit encodes and decodes in C rather than row by row in Python.

Decoding reads the version first and dispatches with a plain dict (:data:`DECODERS`); lakes
written in version 1 keep reading, and new objects are always written in the newest version.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from store.errors import CorruptObjectError, FormatVersionError

MAGIC = b"FLRG"
VERSION = 2
ENTRY_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("checksum", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("address", pa.string()),
        ("inline", pa.binary()),
    ]
)
METARANGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("first", pa.string()),
        ("last", pa.string()),
        ("count", pa.int64()),
    ]
)

#: A decoded row: the schema's columns in order (entries: inline content as bytes or None).
Row = tuple[Any, ...]


def encode(rows: Sequence[Row], schema: pa.Schema) -> bytes:
    """Encode rows (tuples in ``schema``'s column order) in the newest format."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    batch = pa.record_batch(
        [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return MAGIC + bytes([VERSION]) + sink.getvalue().to_pybytes()


def decode(data: bytes, schema: pa.Schema) -> list[Row]:
    """Decode rows of any known version.

    Raises:
        FormatVersionError: the bytes are in a version newer than this code reads.
        CorruptObjectError: the bytes do not parse as their version.
    """
    version = _version(data)
    decoder = DECODERS.get(version)
    if decoder is None:
        raise FormatVersionError(
            f"range format version {version} is newer than this flowlake reads (up to "
            f"{VERSION}): upgrade flowlake"
        )
    try:
        return decoder(data, schema)
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise CorruptObjectError(
            f"range object does not decode as format version {version}: {exc}"
        ) from exc


def _version(data: bytes) -> int:
    if data.startswith(b"["):
        return 1
    if data.startswith(MAGIC) and len(data) > len(MAGIC):
        return data[len(MAGIC)]
    raise CorruptObjectError("not a range object: unknown leading bytes")


def _decode_v1(data: bytes, schema: pa.Schema) -> list[Row]:
    rows = json.loads(data)
    if schema is ENTRY_SCHEMA:
        return [
            (p, c, s, m, a, None if i is None else base64.b64decode(i)) for p, c, s, m, a, i in rows
        ]
    return [tuple(row) for row in rows]


def _decode_v2(data: bytes, schema: pa.Schema) -> list[Row]:
    table = pa.ipc.open_stream(pa.py_buffer(data)[len(MAGIC) + 1 :]).read_all()
    if not table.schema.equals(schema):
        raise ValueError(f"unexpected columns {table.schema.names}")
    columns = [column.to_pylist() for column in table.columns]
    return list(zip(*columns, strict=True)) if columns and columns[0] else []


DECODERS: dict[int, Callable[[bytes, pa.Schema], list[Row]]] = {1: _decode_v1, 2: _decode_v2}
