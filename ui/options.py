"""Options every CLI command shares, and opening the lake they name."""

from __future__ import annotations

import os
from typing import Annotated

import typer

import store
from store.errors import LakeNotFoundError

DEFAULT_LAKE = "./lake"

LakeOption = Annotated[
    str,
    typer.Option(
        "--lake",
        envvar="FLOWLAKE_LAKE",
        help="Lake folder, or lakefs://<repository>. Default: $FLOWLAKE_LAKE, else ./lake.",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Namespace to work in: user:<login>, team:<name> or production "
        "(default: user:$FLOWLAKE_USER, else the OS user).",
        show_default=False,
    ),
]
PerimeterOption = Annotated[
    str | None,
    typer.Option(
        "--perimeter",
        help="Perimeter to act in (default: $FLOWLAKE_PERIMETER, else the token's, else staging).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ShowAllOption = Annotated[
    bool,
    typer.Option(
        "--all", "-a", help="Also list flowlake's own records under _flowlake/ (runs, code)."
    ),
]
BranchOption = Annotated[
    str, typer.Option("--branch", "-b", help="Branch to change (bare names: your namespace).")
]
RefOption = Annotated[
    str, typer.Option("--ref", help="Branch, tag, commit id or prefix, with optional ~N.")
]


def open_lake(location: str, namespace: str | None, perimeter: str | None = None) -> store.Lake:
    """Open an existing lake; unlike :func:`store.open`, never creates one (that is ``init``).

    ``perimeter`` (None: ``$FLOWLAKE_PERIMETER``, else the token's) is passed to :func:`store.open`.

    Raises:
        LakeNotFoundError: nothing at ``location`` (the message says how to create it).
        InvalidNameError: bad namespace.
    """
    try:
        return store.open(location, namespace=namespace, perimeter=perimeter, create=False)
    except LakeNotFoundError as exc:
        above = _lake_above(location)
        if above is not None:
            raise LakeNotFoundError(
                f"{exc}; there is one at {above}: pass --lake {above} or set FLOWLAKE_LAKE"
            ) from None
        raise LakeNotFoundError(
            f"{exc}; create one with `flowlake init --lake {location}`"
        ) from None


def _lake_above(location: str) -> str | None:
    """A lake of the same relative name in a folder above the current one (the user is in a
    subfolder of the project, say), as a relative path; None when there is none."""
    if os.path.isabs(location) or location.startswith(store.LAKEFS_SCHEME):
        return None
    here = os.getcwd()
    for depth in range(1, 6):
        folder = os.path.join(here, *[os.pardir] * depth)
        if os.path.normpath(folder) == os.path.normpath(os.path.join(folder, os.pardir)):
            return None  # the root
        if os.path.isfile(os.path.join(folder, location, "refs.db")):
            return os.path.normpath(os.path.join(*[os.pardir] * depth, location))
    return None
