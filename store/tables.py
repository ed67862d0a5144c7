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
    """Read Parquet bytes (see :func:`read_file`).

    Raises:
        InvalidTableError: the bytes are not a complete Parquet file.
        InvalidArgumentError: a name in ``columns`` is not a column of the table.
    """
    try:
        return read_file(data, columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidTableError(f"{path!r} is not a readable Parquet table: {exc}") from None
    except KeyError as exc:
        raise InvalidArgumentError(f"{path!r}: {exc.args[0]}") from None


def read_file(
    source: Any,
    columns: list[str] | None = None,
    *,
    read_dictionary: list[str] | None = None,
    use_threads: bool = True,
) -> pa.Table:
    """Read one whole Parquet file: ``bytes``, a local path or a file object.

    Safe for a process to exit right after. A read through ``pq.read_table`` (its dataset
    scanner) or a threaded read of a buffer that wraps Python ``bytes`` may leave an Arrow
    worker thread holding the last reference to that buffer after the call returns; if the
    interpreter is exiting when the worker drops it, releasing it needs the GIL, Python ends
    the thread, and the process aborts ("terminate called without an active exception",
    status 134; apache/arrow#34314). So bytes read with threads are first copied into memory
    Arrow owns (~2 GB/s), and reads go through ``ParquetFile``, which returns only when its
    work is done.

    ``columns`` names top-level columns (a struct column comes whole); the result has them
    in that order. ``use_threads=False`` decodes on this thread (cheaper for a small file).

    Raises:
        KeyError: a name in ``columns`` is not a column (the message names it and the
            columns there are).
        pyarrow.ArrowInvalid, OSError: not a complete Parquet file.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        source = pa.BufferReader(_arrow_owned(source) if use_threads else source)
    with pq.ParquetFile(source, read_dictionary=read_dictionary) as file:
        if columns is not None:
            names = file.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                quoted = ", ".join(map(repr, missing))
                raise KeyError(f"no column {quoted}; the columns are {names}")
        return file.read(columns=columns, use_threads=use_threads)


def _arrow_owned(data: bytes | bytearray | memoryview) -> pa.Buffer:
    """A copy of ``data`` in memory Arrow allocated: releasing it never needs the GIL."""
    buffer = pa.allocate_buffer(len(data))
    with memoryview(buffer).cast("B") as view:
        view[:] = data
    return buffer
