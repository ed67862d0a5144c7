"""Where run data lives in a lake, and the Parquet schemas of its files: the one place for both.

Every run owns a folder of *named* files (run metadata and metric series are looked up by name)
and writes its code snapshot *content-addressed* (identical files across runs are stored once)::

    _flowlake/runs/<run_id>/run.parquet           one row: identity, status, commits, host, code
    _flowlake/runs/<run_id>/params.parquet        key, value
    _flowlake/runs/<run_id>/tags.parquet          key, value
    _flowlake/runs/<run_id>/artifacts.parquet     name, kind, path, size, sha256, checksum
    _flowlake/runs/<run_id>/environment.parquet   installed distributions: name, version
    _flowlake/runs/<run_id>/code.parquet          path, size, sha256 of the snapshot's files
    _flowlake/runs/<run_id>/heartbeat.json        {"time": <unix seconds>, "pid": <pid>}
    _flowlake/runs/<run_id>/metrics/part-<seq>.parquet   key, value, step, timestamp
    _flowlake/runs/<run_id>/metrics/part-<first>-<last>.parquet   parts first..last, compacted
    _flowlake/code/<sha256[:2]>/<sha256>          the bytes of one source file
    runs/<run_id>/...                             artifacts logged without an explicit path

Every object is written atomically (a reader sees all of it or none), so a metric part is
complete once it is listed. ``run.parquet`` is the run's completion marker: its ``status`` is
``running`` until the run ends, then ``finished``, ``failed`` or ``killed`` with ``end_time`` set;
it is written after every other file of that session.

The code and environment manifests (``code.parquet``, ``environment.parquet``) hold no run id:
a file belongs to the run whose folder it is in, so runs with the same files or the same
packages write byte-identical manifests, which the content-addressed store keeps once. Readers
take each manifest row's ``run_id`` from the folder (:func:`split_run_path`). Manifests written
before this (with a ``run_id`` column, always the folder's) read the same way: the column is
ignored. ``FORMAT_VERSION`` stays 1, since no reader needs to tell the two shapes apart; a
reader older than this change reports a run-independent manifest as a file lacking ``run_id``
(the ``problems`` view) rather than misreading it.

A finished run's metric parts may be *compacted* (:mod:`tracking.compaction`) into one part named
after the range of sequence numbers it replaces; readers read every file under ``metrics/`` the
same way, so a compacted part reads as the parts it replaced, and a resumed run numbers its next
part after the range.
"""

from __future__ import annotations

import re

import pyarrow as pa

#: Bumped when a file's schema changes incompatibly; stored in ``run.parquet``.
FORMAT_VERSION = 1

ROOT = "_flowlake"
RUNS_PREFIX = f"{ROOT}/runs/"
CODE_PREFIX = f"{ROOT}/code/"
ARTIFACTS_ROOT = "runs"
RUN_BRANCH_PREFIX = "run-"

RUN_FILE = "run.parquet"
PARAMS_FILE = "params.parquet"
TAGS_FILE = "tags.parquet"
ARTIFACTS_FILE = "artifacts.parquet"
ENVIRONMENT_FILE = "environment.parquet"
CODE_FILE = "code.parquet"
HEARTBEAT_FILE = "heartbeat.json"
METRICS_DIR = "metrics"

RUN_STATUSES = ("running", "finished", "failed", "killed")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PART = re.compile(r"^part-(\d{8})(?:-(\d{8}))?\.parquet$")

_TS = pa.timestamp("us", tz="UTC")

RUN_SCHEMA = pa.schema(
    [
        ("format_version", pa.int32()),
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("run_namespace", pa.string()),
        ("target_branch", pa.string()),
        ("run_branch", pa.string()),
        ("parent_run_id", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("user", pa.string()),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("start_time", _TS),
        ("end_time", _TS),
        ("input_commit", pa.string()),
        ("output_commit", pa.string()),
        ("git_commit", pa.string()),
        ("git_dirty", pa.bool_()),
        ("code_root", pa.string()),
        ("python_version", pa.string()),
        ("python_executable", pa.string()),
        ("platform", pa.string()),
        ("heartbeat_interval", pa.float64()),
        ("sessions", pa.int32()),
        ("perimeter", pa.string()),  # the policy perimeter; null in runs written before it
    ]
)

KEY_VALUE_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("key", pa.string()), ("value", pa.string())]
)

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("value", pa.float64()),
        ("step", pa.int64()),
        ("timestamp", _TS),
    ]
)

#: How metric parts are encoded. Only the string columns are dictionary-encoded: values, steps
#: and timestamps rarely repeat, and trying a dictionary on them costs the flusher about a third
#: of its encoding time for nothing.
METRICS_PARQUET_OPTIONS = {"use_dictionary": ["run_id", "key"]}

ARTIFACTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.string()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("checksum", pa.string()),
        ("logged_at", _TS),
    ]
)

#: A run's environment manifest: no run id (see the module docstring), one row per distribution.
ENVIRONMENT_SCHEMA = pa.schema([("name", pa.string()), ("version", pa.string())])

#: A run's code manifest: no run id (see the module docstring), one row per snapshot file.
CODE_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])


def is_run_id(text: str) -> bool:
    """Whether ``text`` has the shape of a run id (32 lowercase hex digits)."""
    return isinstance(text, str) and bool(_RUN_ID.match(text))


def run_dir(run_id: str) -> str:
    return f"{RUNS_PREFIX}{run_id}"


def run_file(run_id: str, name: str) -> str:
    """The path of one of a run's named files (``RUN_FILE``, ``PARAMS_FILE``, ...)."""
    return f"{RUNS_PREFIX}{run_id}/{name}"


def metrics_part(run_id: str, seq: int) -> str:
    return f"{RUNS_PREFIX}{run_id}/{METRICS_DIR}/part-{seq:08d}.parquet"


def compacted_part(run_id: str, first: int, last: int) -> str:
    """The path of a compacted metric part holding parts ``first`` to ``last`` (inclusive)."""
    return f"{RUNS_PREFIX}{run_id}/{METRICS_DIR}/part-{first:08d}-{last:08d}.parquet"


def part_range(path: str) -> tuple[int, int] | None:
    """``(first, last)`` sequence numbers a metric part path holds (equal for a plain part),
    or None when the path is not a metric part."""
    match = _PART.match(path.rsplit("/", 1)[-1])
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    return (first, last) if last >= first else None


def part_number(path: str) -> int | None:
    """The highest sequence number a metric part path holds (its own for a plain part, the
    range's last for a compacted one), or None when it is not a metric part."""
    found = part_range(path)
    return found[1] if found else None


def code_blob(sha256: str) -> str:
    return f"{CODE_PREFIX}{sha256[:2]}/{sha256}"


def run_branch_short(run_id: str) -> str:
    """The short name of the branch a run writes on (in the namespace that started it)."""
    return f"{RUN_BRANCH_PREFIX}{run_id}"


def artifact_prefix(run_id: str) -> str:
    return f"{ARTIFACTS_ROOT}/{run_id}"


def split_run_path(path: str) -> tuple[str, str] | None:
    """``(run_id, relative path)`` of an object under ``_flowlake/runs/``, else None."""
    if not path.startswith(RUNS_PREFIX):
        return None
    run_id, sep, rest = path[len(RUNS_PREFIX) :].partition("/")
    if not sep or not is_run_id(run_id):
        return None
    return run_id, rest
