"""One run's metric series, read straight from its Parquet parts with pyarrow.

``get_metric_history`` is the call a training dashboard makes over and over, so it skips the
SQL machinery: opening a DuckDB connection and building views costs tens of milliseconds, far
more than reading one run's parts. The parts are found through the public store API (a listing
of the run's folder on its own branch), read through the store's verified path (every byte is
checked against the object's hash, so a damaged part raises ``CorruptObjectError`` rather than
returning a wrong value), filtered on the key and sorted like the SQL it replaces
(``ORDER BY step NULLS FIRST, timestamp``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from store import tables
from store.errors import InvalidArgumentError, InvalidTableError
from tracking import catalog, layout
from tracking.index import Index

if TYPE_CHECKING:
    from store import Lake

#: The columns returned, in this order, with their stored types.
HISTORY_SCHEMA = pa.schema([layout.METRICS_SCHEMA.field(n) for n in ("step", "value", "timestamp")])
_READ = ["run_id", "key", "step", "value", "timestamp"]
#: Read as dictionaries: a part repeats a handful of strings, and decoding 100,000 of them
#: would cost more than the rest of the read.
_DICTIONARY = ["run_id", "key"]
_SORT = pc.SortOptions([("step", "ascending", "at_start"), ("timestamp", "ascending", "at_end")])


def metric_history(lake: Lake, run_id: str, key: str) -> pa.Table:
    """Every point of metric ``key`` of run ``run_id``, from the run's own branch, in order.

    A run branch without a run record (a run whose start did not complete) has no history.

    Raises:
        RunNotFoundError: no such run.
        InvalidArgumentError: ``key`` is not a string.
        InvalidTableError: a metric part is not a readable Parquet file.
        CorruptObjectError: a metric part's stored bytes do not match its hash.
    """
    if not isinstance(key, str):
        raise InvalidArgumentError(f"a metric key is a string, got {key!r}")
    with Index(lake) as index:
        source = catalog.run_source(lake, run_id, index)
    folder = layout.run_dir(run_id) + "/"
    metrics = folder + layout.METRICS_DIR + "/"
    listing = lake.list(source.read_ref, prefix=folder)
    if not any(info.path == folder + layout.RUN_FILE for info in listing):
        return HISTORY_SCHEMA.empty_table()
    parts = [
        _matching(_read_part(lake, info.path, source.read_ref), run_id, key)
        for info in listing
        if info.path.startswith(metrics)
    ]
    if not parts:
        return HISTORY_SCHEMA.empty_table()
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    if _strictly_increasing(table["step"]):
        return table  # the usual case: already in order, so skip the sort
    return table.take(pc.sort_indices(table, options=_SORT))


def _read_part(lake: Lake, path: str, ref: str) -> pa.Table:
    data = lake.read_bytes(path, ref)  # verified against its hash
    try:
        return tables.read_file(data, _READ, read_dictionary=_DICTIONARY, use_threads=False)
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise InvalidTableError(f"{path!r} is not a readable Parquet table: {exc}") from None


def _matching(part: pa.Table, run_id: str, key: str) -> pa.Table:
    """The part's rows of ``run_id`` and ``key``, as :data:`HISTORY_SCHEMA`."""
    mask = pc.and_(_equal(part["key"], key), _equal(part["run_id"], run_id))
    return part.filter(mask).select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA)


def _equal(column: pa.ChunkedArray, value: str) -> pa.ChunkedArray:
    """``column == value`` for a dictionary column, comparing each chunk's dictionary once."""
    return pa.chunked_array(
        [pc.take(pc.equal(chunk.dictionary, value), chunk.indices) for chunk in column.chunks],
        pa.bool_(),
    )


def _strictly_increasing(steps: pa.ChunkedArray) -> bool:
    if steps.null_count:
        return False
    return len(steps) < 2 or bool(pc.all(pc.less(steps[:-1], steps[1:])).as_py())
