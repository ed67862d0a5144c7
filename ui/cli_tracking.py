"""``flowlake runs``, ``flowlake runs compact`` and ``flowlake sql``: the tracking commands.

The main CLI registers them with ``app.add_typer(runs_group, name="runs")`` (``runs`` lists
runs; ``runs compact`` compacts finished runs' metric parts) and
``app.command("sql")(sql_command)``; :data:`runs_app` runs them on their own.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from datetime import datetime
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import store
import tracking
from store.errors import StoreError
from tracking import compaction
from ui import render

LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake", help="Lake folder or lakefs://repo (default: $FLOWLAKE_LAKE or ./lake)."
    ),
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", help="Namespace to act in (default: your user's).")
]


def _open(lake: str | None, namespace: str | None) -> store.Lake:
    location = lake or os.environ.get("FLOWLAKE_LAKE") or "./lake"
    return store.open(location, namespace=namespace, create=False)


def _fail(exc: BaseException) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(code=1)


def _cell(value: Any) -> str:
    """A value as people read it in a table (seconds are enough, the zone is UTC)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return render.iso(value)[:19].replace("T", " ")
    return str(value)


def _csv_cell(value: Any) -> str:
    """A value as a lossless CSV cell: :func:`render.json_value` text, nested values as JSON."""
    converted = render.json_value(value)
    if converted is None:
        return ""
    if isinstance(converted, list | dict):
        return json.dumps(converted, allow_nan=False)
    return str(converted)


def _rich_table(table: pa.Table, title: str | None = None) -> Table:
    out = Table(title=title, show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold")
    for row in table.to_pylist():
        out.add_row(*(_cell(row[name]) for name in table.column_names))
    return out


def runs_command(
    ctx: typer.Context,
    branch: Annotated[
        str | None, typer.Option("--branch", "-b", help="Runs started on (or written to) it.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", "-s", help="running, finished, failed, killed or stale."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Substring of the name.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON list of runs, every column in full.")
    ] = False,
    lake: LakeOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """List runs of every namespace, newest first.

    --json prints one JSON list with a dict per run (the columns of the ``runs`` table),
    instants in ISO 8601 with their offset (UTC).
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        with _open(lake, namespace) as opened:
            found = tracking.search_runs(
                opened, branch=branch, status=status, name=name, limit=limit
            )
    except StoreError as exc:
        raise _fail(exc) from None
    if as_json:
        render.emit_json(found.to_pylist())
        return
    Console().print(_runs_table(found))


def _runs_table(found: pa.Table) -> Table:
    """Runs in an 80-column terminal: 8-digit ids, names and branches cut with an ellipsis,
    start times on one line (--json has every column in full)."""
    from rich import box

    out = Table(
        title=f"{found.num_rows} run(s)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    out.add_column("run", no_wrap=True, min_width=8)
    out.add_column("name", no_wrap=True, overflow="ellipsis", max_width=16)
    out.add_column("status", no_wrap=True, min_width=8)
    out.add_column("branch", no_wrap=True, overflow="ellipsis", max_width=16)
    out.add_column("user", no_wrap=True, overflow="ellipsis", max_width=8)
    out.add_column("started (UTC)", no_wrap=True, min_width=16)
    for row in found.to_pylist():
        out.add_row(
            row["run_id"][:8],
            row["name"] or "",
            row["status"],
            row["target_branch"] or "",
            row["user"] or "",
            _cell(row["start_time"])[:16],
        )
    return out


def sql_command(
    query: Annotated[str, typer.Argument(help="One SELECT over runs, params, metrics, ...")],
    ref: Annotated[
        str | None, typer.Option("--ref", help="Query the history as of this ref.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per row (JSON lines).")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Stop the query after this many seconds.", min=0.001),
    ] = None,
    lake: LakeOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Run read-only SQL over the run history of every namespace.

    --json prints one strict JSON object per row and --csv a header and rows; both
    print instants in ISO 8601 with their offset (UTC) and floats exactly.
    """
    if as_json and as_csv:
        raise _fail(ValueError("choose --json or --csv, not both"))
    try:
        with _open(lake, namespace) as opened:
            result = tracking.sql(opened, query, ref=ref, timeout=timeout)
    except StoreError as exc:
        raise _fail(exc) from None
    if as_json:
        for row in result.to_pylist():
            typer.echo(json.dumps(render.json_value(row), allow_nan=False))
    elif as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(result.column_names)
        for row in result.to_pylist():
            writer.writerow([_csv_cell(row[c]) for c in result.column_names])
        typer.echo(buffer.getvalue(), nl=False)
    else:
        Console().print(_rich_table(result))


def compact_command(
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch", "-b", help="Compact this branch (default: every branch of yours)."
        ),
    ] = None,
    min_parts: Annotated[
        int, typer.Option("--min-parts", help="Compact runs with at least this many parts.", min=2)
    ] = 2,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be compacted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    lake: LakeOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Compact finished runs' metric parts into one part per run, one commit per branch.

    Views read the same rows afterwards; refs older than the compaction keep the old parts; live
    runs are left alone. Running it again does nothing.
    """
    try:
        with _open(lake, namespace) as opened:
            done = compaction.compact(opened, branch, min_parts=min_parts, dry_run=dry_run)
    except StoreError as exc:
        raise _fail(exc) from None
    if as_json:
        render.emit_json([dataclasses.asdict(c) for c in done])
        return
    shown = [c for c in done if c.runs or c.skipped or c.left_alone]
    if not shown:
        render.stdout().print(Text("nothing to compact"))
        return
    # A run's parts are on its run branch and on the branch it was merged into: each branch is
    # compacted on its own (its own row), but a run is counted once.
    runs = {r.run_id for c in done for r in c.runs}
    branches = sum(1 for c in done if c.runs)
    # The style of `branch list`: run branches' names are 48 characters and stay whole, so at
    # 80 columns the table has no borders, the numbers keep their headers whole, and why a run
    # or branch was left alone (free text) goes below the table instead of in a column.
    verb = "would compact" if dry_run else "compacted"
    title = f"{verb}: {len(runs)} run(s) on {branches} branch(es)"  # its own line, not wrapped
    out = Table(
        box=box.SIMPLE_HEAD,  # its one-space column separator is the only padding
        show_edge=False,
        pad_edge=False,
        padding=0,
    )
    render.unbroken_column(out, "branch")
    for column in ("runs", "parts", "points"):
        render.unbroken_column(out, column, justify="right")
    if not dry_run:  # a dry run commits nothing
        render.unbroken_column(out, "commit")
    notes: list[str] = []
    for c in shown:
        notes += [f"{c.branch}: {c.left_alone}"] if c.left_alone else []
        notes += [f"{c.branch}: run {run_id[:8]}: {why}" for run_id, why in c.skipped]
        row = [c.branch, str(len(c.runs)), str(c.parts), str(sum(r.points for r in c.runs))]
        out.add_row(*row, *([] if dry_run else [render.short(c.commit or "")]))
    console = Console()
    console.print(Text(title))
    console.print(out)
    if notes:
        console.print(Text("left alone:"))
        for note in notes:
            console.print(Text(f"  {note}"))


#: ``flowlake runs``: lists runs, and holds ``compact``.
runs_group = typer.Typer(
    help="List runs, newest first; `runs compact` compacts their metric parts."
)
runs_group.callback(invoke_without_command=True)(runs_command)
runs_group.command("compact")(compact_command)

runs_app = typer.Typer(help="Experiment tracking commands.", no_args_is_help=True)
runs_app.add_typer(runs_group, name="runs")
runs_app.command("sql")(sql_command)
