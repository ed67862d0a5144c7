"""Parquet encoding of tables: the one place that turns tables into bytes and back."""

from __future__ import annotations

import tempfile
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from store.errors import InvalidArgumentError, InvalidTableError

SPOOL_BYTES = 64 << 20


def to_arrow(table: Any) -> pa.Table:
    """Accept a ``pyarrow.Table``, ``RecordBatch`` or pandas ``DataFrame``.

    A DataFrame converts as ``DataFrame.to_parquet`` converts it, so a table read back with
    ``.to_pandas()`` is what pandas' own Parquet round trip gives: a named or non-default index
    becomes a column restored as the index, a default ``RangeIndex`` is kept as metadata only,
    and pandas' schema metadata (dtypes, column index names) travels with the table.

    Raises:
        InvalidArgumentError: anything else.
    """
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if type(table).__name__ == "DataFrame" and hasattr(table, "to_dict"):
        return pa.Table.from_pandas(table, preserve_index=None)
    raise InvalidArgumentError(
        f"expected a pyarrow.Table or pandas.DataFrame, got {type(table).__name__}"
    )


def encode(table: Any, **parquet_options: Any) -> IO[bytes]:
    """Write a table as Parquet into a spooled temporary file, rewound for reading."""
    arrow = to_arrow(table)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    pq.write_table(arrow, spool, **parquet_options)
    spool.seek(0)
    return spool


def encode_bytes(table: Any, **parquet_options: Any) -> bytes:
    """:func:`encode`, in memory: the same bytes, for tables small enough to hold twice."""
    sink = pa.BufferOutputStream()
    pq.write_table(to_arrow(table), sink, **parquet_options)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def decode(data: bytes, path: str, columns: list[str] | None = None) -> pa.Table:
    """Read Parquet bytes.

    Raises:
        InvalidTableError: the bytes are not a complete Parquet file.
    """
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidTableError(f"{path!r} is not a readable Parquet table: {exc}") from None
