"""``flowlake gate-hook install / status``: the lakeFS server-side gate (docs/policy.md).

The key is read from ``FLOWLAKE_GATE_KEY`` only, and never printed: ``status`` says whether it
is set, not what it is.
"""

from __future__ import annotations

import os

import typer
from rich.text import Text

import store
from store.errors import UnsupportedOperationError
from ui import render
from ui.options import DEFAULT_LAKE, JsonOption, LakeOption, PerimeterOption, open_lake

gate_hook_app = typer.Typer(
    help="lakeFS only: make the lakeFS server refuse merges into main that skipped the gates.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``flowlake gate-hook`` to ``app``."""
    app.add_typer(gate_hook_app, name="gate-hook")


def _open(location: str, perimeter: str | None) -> store.Lake:
    """The lake at ``location``, which must be on lakeFS (checked before the lakeFS-only module
    is imported, so an embedded-only install names the problem instead of a missing package)."""
    opened = open_lake(location, None, perimeter)
    if getattr(opened.backend, "install_gate_hook", None) is None:
        opened.close()
        raise UnsupportedOperationError(
            f"{location} is not a lakeFS lake: the server-side gate hook is a lakeFS feature "
            "(on the embedded backend flowlake enforces the gates itself)"
        )
    return opened


@gate_hook_app.command("install")
def install_command(
    lake: LakeOption = DEFAULT_LAKE,
    perimeter: PerimeterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Install the gate hook on main (needs FLOWLAKE_GATE_KEY, the lakeFS server's key).

    The lakeFS server must run with the same key in LAKEFSACTION_FLOWLAKE_GATE_KEY; the install
    itself is the first merge the hook checks, so a missing or different key is refused and
    nothing changes. It needs the right to change main (the production perimeter).
    """
    with _open(lake, perimeter) as opened:
        from store.backends.lakefs import gatehook  # only once the lake is known to be lakeFS

        commit = gatehook.install_on(opened)
    if as_json:
        render.emit_json({"installed": True, "changed": commit is not None, "commit": commit})
        return
    message = (
        f"gate hook installed on main ({gatehook.ACTION_PATH}, commit {commit[:12]})"
        if commit is not None
        else "the gate hook was already installed on main"
    )
    render.stdout().print(Text(message))


@gate_hook_app.command("status")
def status_command(
    lake: LakeOption = DEFAULT_LAKE,
    perimeter: PerimeterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Whether main holds the gate hook, and whether FLOWLAKE_GATE_KEY is set here."""
    with _open(lake, perimeter) as opened:
        from store.backends.lakefs import gatehook  # only once the lake is known to be lakeFS

        installed = gatehook.installed_on(opened)
    key_set = bool(os.environ.get(gatehook.CLIENT_KEY_ENV))
    if as_json:
        render.emit_json({"installed": installed, "key_set": key_set})
        return
    out = render.stdout()
    out.print(Text(f"gate hook on main: {'installed' if installed else 'not installed'}"))
    out.print(Text(f"{gatehook.CLIENT_KEY_ENV}: {'set' if key_set else 'not set'}"))
