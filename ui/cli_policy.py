"""``flowlake token / audit / gates / approve / check``: tokens, the audit log, the gates.

The lake is opened like every command does (``FLOWLAKE_TOKEN`` and ``FLOWLAKE_PERIMETER`` are
read by :func:`store.open`); ``--perimeter`` overrides the variable. A token's secret is printed
once, by ``token create``, and appears nowhere else: not in ``--json`` output, not in errors.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from store.errors import InvalidArgumentError
from store.policy import api
from store.policy.tokens import SCOPES, TokenRecord, parse_lifetime
from ui import render
from ui.options import (
    DEFAULT_LAKE,
    JsonOption,
    LakeOption,
    NamespaceOption,
    PerimeterOption,
    open_lake,
)

token_app = typer.Typer(help="Machine tokens for CI: create, list, revoke.", no_args_is_help=True)
gates_app = typer.Typer(help="Promotion gates of main's policy.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the policy commands to ``app``."""
    app.add_typer(token_app, name="token")
    app.add_typer(gates_app, name="gates")
    app.command("audit")(audit_command)
    app.command("approve")(approve_command)
    app.command("check")(check_command)


def _token_json(record: TokenRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "principal": record.principal,
        "perimeter": record.perimeter,
        "scopes": list(record.scopes),
        "created": record.created.isoformat(),
        "expires": record.expires.isoformat(),
        "revoked": record.revoked.isoformat() if record.revoked else None,
        "last_used": record.last_used.isoformat() if record.last_used else None,
    }


@token_app.command("create")
def token_create_command(
    name: Annotated[str, typer.Option("--name", help="Token name (principal token:<name>).")],
    perimeter_for: Annotated[
        str, typer.Option("--perimeter", help="The one perimeter the token acts in.")
    ],
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime, at most 366d: 90s, 30m, 12h, 30d, 2w.")
    ] = "30d",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help=f"What it may do (repeat or comma-separate): {', '.join(SCOPES)}. "
            "Default: everything its perimeter allows.",
            show_default=False,
        ),
    ] = None,
    lake: LakeOption = DEFAULT_LAKE,
) -> None:
    """Create a token and print its secret ONCE (store it in your CI's secrets).

    Needs the production perimeter (FLOWLAKE_PERIMETER=production).
    """
    try:  # a usage error (exit 2) before the lake is opened, as gc's --retention is
        parse_lifetime(expires)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    scopes = tuple(s.strip() for text in scope or () for s in text.split(",") if s.strip())
    opened = open_lake(lake, None, None)
    secret, record = api.create_token(opened, name, perimeter_for, expires, scopes)
    out = render.stdout()
    out.print(
        Text.assemble(
            ("created token ", "green"),
            (record.name, "bold"),
            f" for perimeter {record.perimeter}, scopes {','.join(record.scopes) or 'all'}, "
            f"expires {record.expires:%Y-%m-%d %H:%M} UTC",
        )
    )
    out.print("Its secret is shown only now; set it as FLOWLAKE_TOKEN in CI:")
    print(secret)


@token_app.command("list")
def token_list_command(lake: LakeOption = DEFAULT_LAKE, as_json: JsonOption = False) -> None:
    """Tokens: name, perimeter, scopes, expiry, last use (never a secret)."""
    records = api.list_tokens(open_lake(lake, None, None))
    if as_json:
        render.emit_json([_token_json(r) for r in records])
        return
    table = Table(box=box.SIMPLE)
    for column in ("name", "perimeter", "scopes", "expires", "last used", "state"):
        table.add_column(column)
    for r in records:
        state = "revoked" if r.revoked else "active"
        table.add_row(
            r.name,
            r.perimeter,
            ",".join(r.scopes) or "all",
            f"{r.expires:%Y-%m-%d %H:%M}",
            f"{r.last_used:%Y-%m-%d %H:%M}" if r.last_used else "never",
            state,
        )
    render.stdout().print(table)


@token_app.command("revoke")
def token_revoke_command(
    name: Annotated[str, typer.Argument(help="The token to revoke.")],
    lake: LakeOption = DEFAULT_LAKE,
) -> None:
    """Revoke a token: its next use fails. Needs the production perimeter."""
    opened = open_lake(lake, None, None)
    before = {t.name: t.revoked for t in api.list_tokens(opened)}.get(name)
    record = api.revoke_token(opened, name)
    if before is not None:
        when = before.isoformat(timespec="seconds")
        render.stdout().print(f"token {record.name} was already revoked on {when}")
        return
    render.stdout().print(Text.assemble(("revoked ", "yellow"), (record.name, "bold")))


def audit_command(
    verify: Annotated[bool, typer.Option("--verify", help="Verify the hash chain.")] = False,
    lake: LakeOption = DEFAULT_LAKE,
    perimeter: PerimeterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the audit log: promotions, policy changes, tokens, gates.

    --verify checks the hash chain and the heads anchored in main's promotion commits, and
    exits 1 when either is broken.
    """
    opened = open_lake(lake, None, perimeter)
    entries = api.audit_log(opened)
    problems = api.verify_audit(opened) if verify else []
    if as_json:
        data: dict[str, Any] = {"entries": [{**e.body(), "hash": e.hash} for e in entries]}
        if verify:
            data["problems"] = problems
        render.emit_json(data)
    else:
        table = Table(box=box.SIMPLE)
        for column in ("seq", "time", "actor", "action", "details"):
            table.add_column(column)
        for e in entries:
            details = ", ".join(f"{k}={v}" for k, v in e.details.items())
            table.add_row(str(e.seq), e.time[:19], e.actor, e.action, details)
        out = render.stdout()
        out.print(table)
        if verify:
            if problems:
                for problem in problems:
                    out.print(Text(f"  {problem}", "red"))
            else:
                out.print(Text(f"audit chain intact: {len(entries)} entries", "green"))
    if problems:
        raise typer.Exit(1)


@gates_app.command("check")
def gates_check_command(
    source: Annotated[str, typer.Argument(help="Branch or commit to promote.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    perimeter: PerimeterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Dry-run main's promotion gates on SOURCE's commit; exits 1 when one fails."""
    opened = open_lake(lake, namespace, perimeter)
    outcomes = api.check_gates(opened, source)
    if as_json:
        render.emit_json(
            [
                {
                    "kind": o.gate.kind.value,
                    "gate": o.gate.name,
                    "passed": o.passed,
                    "detail": o.detail,
                }
                for o in outcomes
            ]
        )
    else:
        out = render.stdout()
        if not outcomes:
            out.print("the policy has no gates")
        for o in outcomes:
            out.print(
                Text.assemble(
                    ("pass " if o.passed else "FAIL ", "green" if o.passed else "red"), o.summary()
                )
            )
    if not all(o.passed for o in outcomes):
        raise typer.Exit(1)


def approve_command(
    source: Annotated[str, typer.Argument(help="Branch or commit to approve.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    perimeter: PerimeterOption = None,
) -> None:
    """Record your approval of SOURCE's commit in the audit log (for approvals gates)."""
    opened = open_lake(lake, namespace, perimeter)
    entry = api.approve(opened, source)
    render.stdout().print(
        Text.assemble(
            ("approved ", "green"),
            render.short(str(entry.details["commit"])),
            f" as {entry.actor} (audit entry {entry.seq})",
        )
    )


def check_command(
    name: Annotated[str, typer.Argument(help="The check's name, as a check_run gate names it.")],
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.")],
    ref: Annotated[str, typer.Option("--ref", help="Branch or commit the check runs on.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    perimeter: PerimeterOption = None,
) -> None:
    """Run COMMAND as a tracking run tagged check=NAME on REF's commit.

    The run counts for a check_run gate when the command exits 0; exits with its status.
    """
    import tracking

    opened = open_lake(lake, namespace, perimeter)
    commit = opened.resolve(ref)
    run = tracking.start_run(
        opened,
        name=f"check {name}",
        tags={"check": name},
        merge=False,
        snapshot_code=False,
        input_commit=commit,
    )
    try:
        code = _run_forwarding_stops(command)
    except BaseException as exc:
        run.end("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    run.end("finished" if code == 0 else "failed", error=None if code == 0 else f"exit {code}")
    state = ("passed", "green") if code == 0 else ("failed", "red")
    render.stdout().print(
        Text.assemble(f"check {name} on {render.short(commit)}: ", state, f" (run {run.id})")
    )
    raise typer.Exit(code if code >= 0 else 128 - code)  # as a shell reports a signal


#: Stop signals a CI runner or process manager sends; passed on to the checked command.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _run_forwarding_stops(command: list[str]) -> int:
    """Run ``command``; its exit status (negative: the signal that ended it).

    A stop signal sent to flowlake (a cancelled CI job, ``docker stop``) is passed on to the
    command and its end awaited, so the command never outlives the run that records it and
    the run ends failed with ``exit -15`` rather than being left running. Ctrl-C reaches the
    command from the terminal itself and flowlake waits for its end; a second Ctrl-C kills it.
    """
    process = subprocess.Popen(command)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {
            sig: signal.signal(sig, lambda received, _frame: process.send_signal(received))
            for sig in FORWARDED_SIGNALS
        }
    try:
        try:
            return process.wait()
        except KeyboardInterrupt:
            try:
                return process.wait()  # it had the terminal's SIGINT too: its exit decides
            except KeyboardInterrupt:
                process.kill()
                process.wait()
                raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
