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

#: The allocator for large tables. pyarrow's default (mimalloc in recent wheels) took 2-3 s to
#: combine or filter a million-entry table on Linux, 30 times the system allocator's time.
POOL = pa.system_memory_pool()

#: A decoded row: the schema's columns in order (entries: inline content as bytes or None).
Row = tuple[Any, ...]


def encode(rows: Sequence[Row], schema: pa.Schema) -> bytes:
    """Encode rows (tuples in ``schema``'s column order) in the newest format."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    table = pa.table(
        [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
        schema=schema,
    )
    return encode_table(table)


def encode_table(table: pa.Table, canonical: bool = True) -> bytes:
    """Encode a table (a slice of one is fine) in the newest format, as one record batch.

    When ``canonical``, the same rows give the same bytes whether they come from :func:`encode`
    or from a slice of a larger table, so ranges built row by row and column by column share
    their ids; otherwise a table of single-chunk columns is written without copying it.
    """
    if not canonical and all(column.num_chunks == 1 for column in table.columns):
        columns = [column.chunk(0) for column in table.columns]
    else:
        # Fresh buffers: a slice would carry its parent's offsets and validity bitmaps.
        columns = [
            pa.concat_arrays(column.chunks, memory_pool=POOL)
            if column.num_chunks
            else pa.array([], column.type)
            for column in table.columns
        ]
    batch = pa.record_batch(columns, schema=table.schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
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


def decode_table(data: bytes, schema: pa.Schema) -> pa.Table:
    """Decode an object of any known version as a table with ``schema``'s columns.

    Raises:
        FormatVersionError: the bytes are in a version newer than this code reads.
        CorruptObjectError: the bytes do not parse as their version.
    """
    version = _version(data)
    if version != 2:
        rows = decode(data, schema)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
        return pa.table(
            [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
            schema=schema,
        )
    try:
        return _table_v2(data, schema)
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise CorruptObjectError(
            f"range object does not decode as format version {version}: {exc}"
        ) from exc


def _table_v2(data: bytes, schema: pa.Schema) -> pa.Table:
    table = pa.ipc.open_stream(pa.py_buffer(data)[len(MAGIC) + 1 :], memory_pool=POOL).read_all()
    if not table.schema.equals(schema):
        raise ValueError(f"unexpected columns {table.schema.names}")
    return table


def _decode_v2(data: bytes, schema: pa.Schema) -> list[Row]:
    table = _table_v2(data, schema)
    columns = [column.to_pylist() for column in table.columns]
    return list(zip(*columns, strict=True)) if columns and columns[0] else []


DECODERS: dict[int, Callable[[bytes, pa.Schema], list[Row]]] = {1: _decode_v1, 2: _decode_v2}
