"""Where deployment data lives in a lake, and its Parquet schemas: the one place for both.

Each deployment owns one production-namespace branch, ``deploy-<name>``, created from ``main``'s
first commit so that it holds nothing but the deployment's own files (the data and runs it
serves stay on the branch it was deployed from). Nothing on it is ever merged::

    _flowlake/deployments/<name>/deployment.parquet      one row: the record (see RECORD_SCHEMA)
    _flowlake/deployments/<name>/metrics/part-<time>-<id>.parquet   live outcomes

A metric part is named by the microsecond it was flushed and a random id, so several processes
can log to one deployment at once without coordinating. The ``production`` deployment's branch
is ``deploy-production``, created on its first write; it follows ``main``.
"""

from __future__ import annotations

import re

import pyarrow as pa

FORMAT_VERSION = 1
PRODUCTION = "production"
BRANCH_PREFIX = "deploy-"
ROOT = "_flowlake/deployments/"
RECORD_FILE = "deployment.parquet"
METRICS_DIR = "metrics"
STATUSES = ("live", "promoted", "retired")

#: A deployment name: what a short branch name allows, without ``__``, at most 100 characters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")

_TS = pa.timestamp("us", tz="UTC")

RECORD_SCHEMA = pa.schema(
    [
        ("format_version", pa.int32()),
        ("deployment", pa.string()),
        ("branch", pa.string()),
        ("commit", pa.string()),
        ("model", pa.string()),
        ("user", pa.string()),
        ("deployed_at", _TS),
        ("status", pa.string()),
        ("ended_at", _TS),
        ("merge_commit", pa.string()),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        ("deployment", pa.string()),
        ("key", pa.string()),
        ("value", pa.float64()),
        ("step", pa.int64()),
        ("timestamp", _TS),
        ("segment", pa.string()),
    ]
)

#: Only the repetitive string columns are dictionary-encoded (as for run metrics).
METRICS_PARQUET_OPTIONS = {"use_dictionary": ["deployment", "key", "segment"]}


def is_name(text: object) -> bool:
    """Whether ``text`` can name a deployment."""
    return isinstance(text, str) and bool(_NAME.match(text)) and "__" not in text


def branch_name(name: str) -> str:
    """The production-namespace branch holding deployment ``name``'s data."""
    return f"{BRANCH_PREFIX}{name}"


def name_of_branch(branch: str) -> str | None:
    """The deployment a branch holds (``deploy-x`` -> ``x``), or None for other branches."""
    if "/" in branch or not branch.startswith(BRANCH_PREFIX):
        return None
    name = branch[len(BRANCH_PREFIX) :]
    return name if is_name(name) else None


def folder(name: str) -> str:
    return f"{ROOT}{name}/"


def record_file(name: str) -> str:
    return f"{ROOT}{name}/{RECORD_FILE}"


def metrics_prefix(name: str) -> str:
    return f"{ROOT}{name}/{METRICS_DIR}/"


def metrics_part(name: str, micros: int, token: str) -> str:
    return f"{metrics_prefix(name)}part-{micros:016d}-{token}.parquet"
