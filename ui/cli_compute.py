"""``flowlake run``, ``jobs``, ``logs`` and ``cancel``: compute jobs from the command line.

The main CLI registers them with :func:`register`.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import compute
from compute.backends import EXECUTORS
from compute.state import StatusRecord
from store.errors import InvalidArgumentError, StoreError
from ui import render
from ui.options import DEFAULT_LAKE, JsonOption, LakeOption, NamespaceOption, open_lake

_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\[\],-]*)\s*(.*)$")


def parse_pypi(items: list[str] | None, index_url: str | None = None) -> compute.Environment:
    """``["humanize==4.9.0", "numpy>=2"]`` -> ``Environment(pypi={...}, index_url=...)``.

    Raises:
        typer.BadParameter: not a requirement.
    """
    pypi: dict[str, str] = {}
    for item in items or []:
        match = _REQUIREMENT.match(item.strip())
        if not match:
            raise typer.BadParameter(f"{item!r} is not PKG or PKG==VERSION", param_hint="--pypi")
        if match[1] in pypi:  # else the last one would silently win
            raise typer.BadParameter(
                f"{match[1]} is given twice ({match[1]}{pypi[match[1]]} and {item.strip()}): "
                "give it once, with one version spec",
                param_hint="--pypi",
            )
        pypi[match[1]] = match[2]
    if index_url is not None and not pypi:
        raise typer.BadParameter(
            "--index-url is where --pypi packages come from: give --pypi PKG too, or leave it out",
            param_hint="--index-url",
        )
    try:
        return compute.Environment(pypi=pypi, index_url=index_url)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pypi / --index-url") from None


def run_command(
    command: Annotated[
        list[str], typer.Argument(help="The command to run, after --: -- python train.py ...")
    ],
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the job needs.")] = 0,
    cpus: Annotated[float, typer.Option("--cpus", help="CPU cores the job needs.")] = 1.0,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory to reserve, e.g. 4GiB.")
    ] = None,
    input_ref: Annotated[
        str, typer.Option("--input", help="Branch, tag or commit the job reads (pinned now).")
    ] = "main",
    branch: Annotated[
        str | None,
        typer.Option("--branch", help="Branch a successful job merges into (default job-<id>)."),
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="local or ray.")] = "local",
    pypi: Annotated[
        list[str] | None,
        typer.Option("--pypi", help="A package for the job's environment, PKG==V (repeatable)."),
    ] = None,
    index_url: Annotated[
        str | None,
        typer.Option("--index-url", help="The package index --pypi installs from (default PyPI)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the job.")] = None,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Retries of a failed attempt.")
    ] = 0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds an attempt may run.")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Print the job id and return at once.")
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a command as a job that reads a pinned commit and writes its own branch.

    The job's output is echoed as it comes: on standard output, or with --json on standard
    error, so that standard output is only the job's JSON.
    """
    environment = parse_pypi(pypi, index_url)
    if timeout is not None and not timeout > 0:  # NaN too
        raise typer.BadParameter(
            f"a positive number of seconds, got {timeout:g}", param_hint="--timeout"
        )
    try:
        resources = compute.Resources(gpus=gpus, cpus=cpus, memory=memory or 0)
    except compute.ResourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--gpus / --cpus / --memory") from None
    if backend not in EXECUTORS:
        raise typer.BadParameter(
            f"unknown compute backend {backend!r}; choose one of {', '.join(sorted(EXECUTORS))}",
            param_hint="--backend",
        )
    if detach and backend == "ray":
        raise typer.BadParameter(
            "Ray tasks end with the process that submitted them; drop --detach for ray",
            param_hint="--detach",
        )
    opened = open_lake(lake, namespace)
    job = compute.submit(
        command=command,
        lake=opened,
        input_ref=input_ref,
        output_branch=branch,
        resources=resources,
        environment=environment,
        backend=backend,
        retries=retries,
        timeout=timeout,
        name=name,
    )
    console = Console(stderr=True)
    if detach:
        if as_json:
            typer.echo(json.dumps(_job_json(job)))
        else:
            typer.echo(job.id)
            console.print(
                Text(f"follow it with: flowlake logs {job.id[:12]} -f --lake {lake}", style="dim")
            )
        return
    # With --json, standard output carries the one JSON document: the job's output goes to stderr.
    echo = sys.stderr if as_json else sys.stdout
    try:
        with console.status(f"job {job.id[:12]} {job.status.value}") as status:
            for chunk in job.follow():
                status.update(f"job {job.id[:12]} {job.status.value}")
                echo.write(chunk)
                echo.flush()
    except KeyboardInterrupt:
        job.cancel()
        render.error_line(f"job {job.id[:12]} cancelled (Ctrl-C)")
        raise typer.Exit(130) from None
    _finish(job, console, as_json)


def _finish(job: compute.Job, console: Console, as_json: bool) -> None:
    record = job.record()
    status = record.effective()
    if as_json:
        typer.echo(json.dumps(_job_json(job)))
    elif status is compute.JobStatus.SUCCEEDED:
        merged = render.short(record.output_commit or "")
        console.print(
            Text(
                f"job {job.id[:12]} succeeded: run {(record.run_id or '')[:12]}, "
                f"merged into {job.spec.output_branch} at {merged}",
                style="green",
            )
        )
    _fail_unless_succeeded(job, record)


def _fail_unless_succeeded(job: compute.Job, record: StatusRecord | None = None) -> None:
    """An ended job that did not succeed (failed, cancelled, killed): one red line saying why on
    standard error, and exit status 1, as ``job.wait()`` raises."""
    record = record if record is not None else job.record()
    status = record.effective()
    if status is not compute.JobStatus.SUCCEEDED:
        reason = record.error or (
            "its supervisor process died"
            if status is compute.JobStatus.KILLED
            else "no reason recorded"
        )
        render.error_line(f"job {job.id[:12]} {status.value}: {reason}")
        raise typer.Exit(1)


def _job_json(job: compute.Job) -> dict[str, Any]:
    spec = job.spec
    record = job.record()
    return {
        "id": job.id,
        "name": spec.name,
        "status": record.effective().value,
        "backend": spec.backend,
        "resources": {
            "gpus": spec.resources.gpus,
            "cpus": spec.resources.cpus,
            "memory": spec.resources.memory_bytes,
        },
        "gpus": list(record.gpus),
        "input_ref": spec.input_ref,
        "input_commit": spec.input_commit,
        "output_branch": spec.output_branch,
        "run_id": record.run_id,
        "output_commit": record.output_commit,
        "error": record.error,
        "submitted_at": datetime.fromtimestamp(spec.submitted_at, UTC).isoformat(),
    }


_STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "killed": "red",
}


def jobs_command(
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the newest this many jobs.")
    ] = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the jobs submitted on this lake from any process of this machine, oldest first.

    A job whose record cannot be read (one written by another flowlake version, say) is left
    out with a warning on standard error; the others are listed.
    """
    opened = open_lake(lake, namespace)
    rows = []
    for job in compute.jobs(opened, limit=limit):
        try:
            rows.append(_job_json(job))
        except (StoreError, OSError, ValueError) as exc:
            render.stderr().print(
                Text(f"warning: job {job.id[:12]} left out: {exc}", style="yellow")
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    cells = [
        {
            "id": row["id"][:12],
            "name": _shortened(_printable(row["name"] or "")),
            "status": row["status"],
            "backend": row["backend"],
            "resources": f"gpus={row['resources']['gpus']} cpus={row['resources']['cpus']:g}",
            "input": f"{row['input_ref']}@{row['input_commit'][:12]}",
            "run": (row["run_id"] or "")[:12],
            "submitted": row["submitted_at"][:19].replace("T", " "),
        }
        for row in rows
    ]
    render.stdout().print(_jobs_table(cells, f"jobs on {lake}", render.stdout().width))


def _printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``): a job's name
    is anyone's on the machine, and an escape sequence in it must not drive the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _shortened(name: str) -> str:
    """A name cut to :data:`NAME_WIDTH` characters for the table (--json has it whole): a
    sweep's item may be named after a large argument."""
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


#: The most characters of a job's name ``flowlake jobs`` shows.
NAME_WIDTH = 80

#: C0 and C1 controls, line separators and the bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


#: Columns of ``flowlake jobs``; every one but the name is an id, a time or a token, never split.
_JOB_COLUMNS = ("id", "name", "status", "backend", "resources", "input", "run", "submitted")


def _jobs_table(cells: list[dict[str, str]], title: str, width: int) -> Table:
    """One row per job. When every column fits ``width`` they are side by side; otherwise the
    id, status, backend and submit time keep their columns and the name, resources, input and
    run stack in one ``job`` column, each on its own line (wrapped between words only)."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0)
    )
    natural = {c: max([len(c), *(len(cell[c]) for cell in cells)]) for c in _JOB_COLUMNS}
    # a one-space rule and one space of padding between columns, an edge each side
    if sum(natural.values()) + 2 * (len(_JOB_COLUMNS) - 1) + 2 <= width:
        for column in _JOB_COLUMNS:
            render.unbroken_column(table, column)
        for cell in cells:
            table.add_row(*(_job_cell(cell, c) for c in _JOB_COLUMNS))
        return table
    kept = ("id", "status", "backend", "submitted")
    for column in kept[:-1]:
        render.unbroken_column(table, column)
    table.add_column("job")
    render.unbroken_column(table, "submitted")
    for cell in cells:
        lines = [cell["name"], cell["resources"], f"input {cell['input']}"]
        lines += [f"run {cell['run']}"] if cell["run"] else []
        job = Text("\n").join(Text(line, "bold" if i == 0 else "") for i, line in enumerate(lines))
        table.add_row(
            cell["id"], _job_cell(cell, "status"), cell["backend"], job, cell["submitted"]
        )
    return table


def _job_cell(cell: dict[str, str], column: str) -> Text:
    style = _STATUS_STYLE.get(cell[column], "") if column == "status" else ""
    return Text(cell[column], style)


def logs_command(
    job_id: Annotated[str, typer.Argument(help="A job id or a unique prefix.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
) -> None:
    """Print a job's output (stdout and stderr of every attempt).

    With -f, exits 1 (saying why on standard error) when the job ended failed, cancelled or
    killed, like flowlake run; 0 when it succeeded.
    """
    job = compute.get_job(open_lake(lake, namespace), job_id)
    if not follow:
        sys.stdout.write(job.logs())
        return
    for chunk in job.follow():
        sys.stdout.write(chunk)
        sys.stdout.flush()
    _fail_unless_succeeded(job)


def cancel_command(
    job_id: Annotated[str, typer.Argument(help="A job id or a unique prefix.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
) -> None:
    """Cancel a queued or running job (a job that has ended keeps its status)."""
    job = compute.get_job(open_lake(lake, namespace), job_id)
    status = job.status
    if status.is_final:
        typer.echo(f"job {job.id[:12]} has ended already ({status.value})")
        return
    job.cancel()
    typer.echo(f"job {job.id[:12]} cancelling")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``jobs``, ``logs`` and ``cancel`` to the ``flowlake`` command."""
    app.command("run", context_settings={"allow_interspersed_args": False})(run_command)
    app.command("jobs")(jobs_command)
    app.command("logs")(logs_command)
    app.command("cancel")(cancel_command)
