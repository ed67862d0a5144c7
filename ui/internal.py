"""flowlake's own records in listings: what ``ls``, ``diff`` and ``branch list`` fold away
unless asked.

Runs, code snapshots, the policy, tokens and the audit log live under ``_flowlake/`` on the
same branches as the data they describe (``tracking.layout``, ``store.policy``). In a listing
meant for a person they drown the data (one run adds a dozen entries), so the human output of
``ls`` and ``diff`` counts them on one line instead; ``--all`` lists them, and ``--json`` always
does (scripts get everything). A prefix that itself starts with ``_flowlake`` shows them too.
Tracking runs' own branches (``run-<run id>``, one per run: a sweep makes hundreds) and the
output branches compute jobs name by default (``job-<id>``, one per ``flowlake run`` without
``--branch``) are folded from ``branch list`` the same way (``--runs`` lists them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from rich.text import Text

ROOT = "_flowlake/"

T = TypeVar("T")


def fold(
    items: Sequence[T], path: Callable[[T], str], *, show_all: bool, prefix: str = ""
) -> tuple[list[T], int]:
    """``items`` without flowlake's records, and how many were left out.

    Nothing is left out with ``show_all`` or when ``prefix`` points inside ``_flowlake``.
    """
    if show_all or prefix.startswith(ROOT.rstrip("/")):
        return list(items), 0
    kept = [item for item in items if not path(item).startswith(ROOT)]
    return kept, len(items) - len(kept)


def folded_line(hidden: int, what: str) -> Text:
    """The line that stands for ``hidden`` folded entries (``what``: "objects", "changes"),
    short enough for an 80-column terminal."""
    noun = what if hidden != 1 else what.rstrip("s")
    return Text(
        f"+ {hidden} {noun} in flowlake records under {ROOT} (--all lists them)", style="dim"
    )


def is_run_branch(name: str) -> bool:
    """Whether ``name`` (full or short) is a tracking run's own branch, ``run-<run id>``."""
    from tracking import layout

    short = name.rpartition("/")[2]
    prefix = layout.RUN_BRANCH_PREFIX
    return short.startswith(prefix) and layout.is_run_id(short[len(prefix) :])


def is_job_branch(name: str) -> bool:
    """Whether ``name`` (full or short) is the output branch a compute job named by default,
    ``job-<12 hex digits of its id>`` (``flowlake run`` without ``--branch``)."""
    short = name.rpartition("/")[2]
    digits = short[len("job-") :]
    return (
        short.startswith("job-")
        and len(digits) == 12
        and all(c in "0123456789abcdef" for c in digits)
    )


def folded_runs_line(runs: int, jobs: int = 0) -> Text:
    """The line that stands for ``runs`` folded run branches and ``jobs`` folded default
    output branches of compute jobs."""
    parts = []
    if runs:
        parts.append(f"{runs} run branch{'es' if runs != 1 else ''} of tracking runs")
    if jobs:
        parts.append(f"{jobs} default output branch{'es' if jobs != 1 else ''} of compute jobs")
    return Text(f"+ {' and '.join(parts)} (--runs lists them)", style="dim")
