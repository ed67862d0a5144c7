"""How the CLI shows store values: rich tables for people, plain dicts for ``--json``.

Every value a user controls (paths, messages, names) goes into tables as :class:`rich.text.Text`
so that brackets in it are never read as rich markup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from store import BranchInfo, Change, ChangeKind, Commit, ObjectInfo

SHORT_ID = 12
CHANGE_STYLES = {ChangeKind.ADDED: "green", ChangeKind.REMOVED: "red", ChangeKind.CHANGED: "yellow"}


def stdout() -> Console:
    """A console on standard output (looked up when printing, so test runners can swap it)."""
    return Console(highlight=False)


def stderr() -> Console:
    """A console on standard error, for progress bars and error lines."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Print ``error: <message>`` in red on one line of standard error."""
    one_line = " ".join(message.split())
    stderr().print(Text(f"error: {one_line}", style="bold red"))


def command_line(console: Console, command: str, prefix: str = "  ") -> None:
    """Print a shell command for the user to paste: one line, never broken by rich (a
    terminal soft-wraps it, so a copy is still the whole command)."""
    console.print(Text(f"{prefix}{command}", style="cyan"), soft_wrap=True)


def unbroken_column(table: Table, header: str, **options: Any) -> None:
    """Add a column whose cells (ids, times) are never split across lines; the table's other
    columns fold first when the output is narrow."""
    table.add_column(header, no_wrap=True, **options)


def emit_json(data: Any) -> None:
    """Print ``data`` as strict JSON on standard output, unstyled so scripts can parse it.

    Values go through :func:`json_value`, so the output is valid JSON (no ``NaN`` tokens),
    lossless and unambiguous (instants in ISO 8601 with their offset).
    """
    typer.echo(json.dumps(json_value(data), indent=2, sort_keys=True, allow_nan=False))


def iso(moment: datetime) -> str:
    """An instant in ISO 8601 with microseconds and its offset, in UTC (``...+00:00``).

    A naive datetime is taken as UTC, which is what the store hands out.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def json_value(value: Any) -> Any:
    """``value`` made JSON-ready without losing anything: instants as :func:`iso`, dates and
    times in ISO 8601, durations as ISO 8601 seconds (``PT1.5S``), decimals and UUIDs as
    strings, bytes as hex, non-finite floats as the strings ``NaN``, ``Infinity`` and
    ``-Infinity``; dicts, lists and tuples recursively."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return (
            value
            if math.isfinite(value)
            else str(value).replace("inf", "Infinity").replace("nan", "NaN")
        )
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"PT{value.total_seconds()!r}S"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)  # Decimal, UUID, enums: their exact text


def short(commit_id: str) -> str:
    """A commit id shortened for display (still a valid unique prefix in practice)."""
    return commit_id[:SHORT_ID]


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


# -- JSON forms ----------------------------------------------------------------------------------


def commit_json(commit: Commit) -> dict[str, Any]:
    """A commit as a JSON-ready dict."""
    return {
        "id": commit.id,
        "message": commit.message,
        "metadata": dict(commit.metadata),
        "parents": list(commit.parents),
        "timestamp": iso(commit.timestamp),
        "committer": commit.committer,
    }


def object_json(info: ObjectInfo) -> dict[str, Any]:
    """An object listing entry as a JSON-ready dict."""
    return {
        "path": info.path,
        "size": info.size,
        "checksum": info.checksum,
        "mtime": iso(info.mtime) if info.mtime else None,
    }


def branch_json(info: BranchInfo) -> dict[str, Any]:
    """A branch listing entry as a JSON-ready dict."""
    return {
        "name": info.name,
        "namespace": info.namespace,
        "head": info.head,
        "protected": info.protected,
    }


def change_json(change: Change) -> dict[str, str]:
    """A diff entry as a JSON-ready dict."""
    return {"path": change.path, "kind": change.kind.value}


# -- tables --------------------------------------------------------------------------------------


# The head (8 hex digits and an ellipsis) and "protected" columns with the padding of all four.
_HEAD_AND_PROTECTED_WIDTH = 9 + 9 + 4


def branches_table(branches: Iterable[BranchInfo], namespace: str) -> Table:
    """Branches with their heads; the current namespace's are bold."""
    table = Table(
        title="branches",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    branches = list(branches)
    # A scratch branch's name is 60-odd characters: in 80 columns the other columns give way,
    # the namespace too when names and namespaces cannot both stay whole.
    unbroken_column(table, "branch")
    longest = max((len(b.name) + len(b.namespace) for b in branches), default=0)
    if longest + _HEAD_AND_PROTECTED_WIDTH <= stdout().width:
        unbroken_column(table, "namespace")
    else:
        table.add_column("namespace", overflow="fold")
    table.add_column("head", overflow="ellipsis")
    table.add_column("protected", overflow="fold")
    for info in branches:
        style = "bold" if info.namespace == namespace else ""
        table.add_row(
            Text(info.name, style=style),
            Text(info.namespace),
            Text(short(info.head), style="cyan"),
            "yes" if info.protected else "",
        )
    return table


def objects_table(objects: Iterable[ObjectInfo], ref: str) -> Table:
    """Objects at a ref with sizes, checksums and write times."""
    table = Table(title=f"objects at {ref}", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    unbroken_column(table, "checksum")
    unbroken_column(table, "written (UTC)")
    for info in objects:
        table.add_row(
            Text(info.path), human_size(info.size), short(info.checksum), _when(info.mtime)
        )
    return table


def commits_table(commits: Iterable[Commit], tags: Mapping[str, str], title: str) -> Table:
    """A history, newest first, with the tags that point at each commit."""
    by_commit: dict[str, list[str]] = {}
    for name, commit_id in sorted(tags.items()):
        by_commit.setdefault(commit_id, []).append(name)
    table = Table(title=title, title_justify="left")
    table.add_column("commit", no_wrap=True)
    table.add_column("date (UTC)", no_wrap=True)
    table.add_column("committer")
    table.add_column("message and metadata", ratio=1)
    table.add_column("tags")
    for commit in commits:
        message = Text(commit.message)
        if commit.metadata:
            metadata = " ".join(f"{k}={v}" for k, v in sorted(commit.metadata.items()))
            message.append(f"\n{metadata}", style="dim")
        table.add_row(
            Text(short(commit.id), style="cyan"),
            _when(commit.timestamp),
            Text(commit.committer),
            message,
            Text(", ".join(by_commit.get(commit.id, [])), style="magenta"),
        )
    return table


def changes_table(changes: Iterable[Change], title: str) -> Table:
    """Changed paths, coloured by kind."""
    table = Table(title=title, title_justify="left")
    table.add_column("change")
    table.add_column("path")
    for change in changes:
        style = CHANGE_STYLES[change.kind]
        table.add_row(Text(change.kind.value, style=style), Text(change.path, style=style))
    return table


def tags_table(tags: Mapping[str, str], commits: Mapping[str, Commit]) -> Table:
    """Tags with the commit each names."""
    table = Table(title="tags", title_justify="left")
    for column in ("tag", "commit", "date (UTC)", "message"):
        table.add_column(column)
    for name, commit_id in sorted(tags.items()):
        commit = commits[commit_id]
        table.add_row(
            Text(name, style="magenta"),
            Text(short(commit_id), style="cyan"),
            _when(commit.timestamp),
            Text(commit.message),
        )
    return table


def commit_line(verb: str, commit: Commit) -> Text:
    """``<verb> <short id>: <message>`` for commands that make one commit."""
    line = Text(f"{verb} ")
    line.append(short(commit.id), style="cyan")
    line.append(f": {commit.message}")
    return line
