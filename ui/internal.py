"""flowlake's own records in listings: what ``ls``, ``diff`` and ``branch list`` fold away
unless asked.

Runs, code snapshots, the policy, tokens and the audit log live under ``_flowlake/`` on the
same branches as the data they describe (``tracking.layout``, ``store.policy``). In a listing
meant for a person they drown the data (one run adds a dozen entries), so the human output of
``ls`` and ``diff`` counts them on one line instead; ``--all`` lists them, and ``--json`` always
does (scripts get everything). A prefix that itself starts with ``_flowlake`` shows them too.
Tracking runs' own branches (``run-<run id>``, one per run: a sweep makes hundreds) are folded
from ``branch list`` the same way (``--runs`` lists them).
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


def folded_runs_line(hidden: int) -> Text:
    """The line that stands for ``hidden`` folded run branches."""
    noun = "run branches" if hidden != 1 else "run branch"
    return Text(f"+ {hidden} {noun} of tracking runs (--runs lists them)", style="dim")
