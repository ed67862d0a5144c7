"""The design card's calls: ``store.branch``, ``store.merge``, ``store.diff``, ``store.log`` and
``store.tag`` on the default lake, so the shortest program reads like the card::

    import store

    exp = store.branch("exp")                  # user:<login>/exp, from production main
    exp.write_bytes("model.bin", b"weights")
    exp.commit("train")
    store.merge(exp.name, into="main")

The default lake is the one the CLI uses: ``$FLOWLAKE_LAKE``, else ``./lake``. Like the CLI,
these calls never create a lake (``store.open`` or ``flowlake init`` does). No lake is kept
between calls: each call opens the lake and closes it before returning, except
:func:`branch`, whose handle keeps the lake it was opened with (release it with
``handle.lake.close()``, or let the handle go).
"""

from __future__ import annotations

import os
from typing import Any

from store.branch import Branch
from store.errors import LakeNotFoundError
from store.lake import Lake
from store.model import Change, Commit, MergeStrategy

#: The lake used when ``FLOWLAKE_LAKE`` is not set (the CLI's default too).
DEFAULT_LAKE = "./lake"
LAKE_VARIABLE = "FLOWLAKE_LAKE"

Location = str | os.PathLike[str] | None


def default_location() -> str:
    """The default lake: ``$FLOWLAKE_LAKE`` when set and not empty, else ``./lake``."""
    return os.environ.get(LAKE_VARIABLE) or DEFAULT_LAKE


def _open(location: Location, namespace: str | None) -> Lake:
    import store

    where = default_location() if location is None else location
    try:
        return store.open(where, namespace=namespace, create=False)
    except LakeNotFoundError as exc:
        raise LakeNotFoundError(
            f"{exc}; create it with store.open({os.fspath(where)!r}) or "
            f"`flowlake init --lake {os.fspath(where)}`"
        ) from None


def branch(
    name: str,
    source: str = "main",
    *,
    exist_ok: bool = False,
    namespace: str | None = None,
    location: Location = None,
) -> Branch:
    """Create a branch on the default lake; see :meth:`Lake.branch`.

    Args:
        name: the branch (bare: in ``namespace``, by default your own).
        source: the ref it starts from.
        exist_ok: return the existing branch instead of failing.
        namespace: the namespace to work in (default ``user:<login>``).
        location: another lake than the default one.

    Returns:
        A handle that keeps its lake open (``handle.lake``).

    Raises:
        LakeNotFoundError: no lake at the location.
        InvalidNameError, AmbiguousNameError, AlreadyExistsError, RefNotFoundError.
    """
    lake = _open(location, namespace)
    try:
        return lake.branch(name, source=source, exist_ok=exist_ok)
    except BaseException:
        lake.close()
        raise


def merge(
    source: str,
    into: str = "main",
    strategy: MergeStrategy | None = None,
    message: str | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    namespace: str | None = None,
    location: Location = None,
) -> Commit:
    """Merge ``source`` into branch ``into`` on the default lake; see :meth:`Lake.merge`.

    Raises:
        LakeNotFoundError, ConflictError, DirtyBranchError, NothingToCommitError,
        InvalidArgumentError, RefNotFoundError.
    """
    with _open(location, namespace) as lake:
        return lake.merge(source, into=into, strategy=strategy, message=message, metadata=metadata)


def diff(
    left: str, right: str, *, namespace: str | None = None, location: Location = None
) -> list[Change]:
    """Committed changes from ``left`` to ``right`` on the default lake; see :meth:`Lake.diff`.

    Raises:
        LakeNotFoundError, RefNotFoundError.
    """
    with _open(location, namespace) as lake:
        return lake.diff(left, right)


def log(
    ref: str = "main",
    limit: int | None = None,
    *,
    namespace: str | None = None,
    location: Location = None,
) -> list[Commit]:
    """Commits reachable from ``ref`` on the default lake, newest first; see :meth:`Lake.log`.

    Raises:
        LakeNotFoundError, RefNotFoundError.
    """
    with _open(location, namespace) as lake:
        return lake.log(ref, limit=limit)


def tag(
    name: str, ref: str = "main", *, namespace: str | None = None, location: Location = None
) -> Commit:
    """Tag the commit ``ref`` names on the default lake; returns it. See :meth:`Lake.tag`.

    Raises:
        LakeNotFoundError, InvalidNameError, AmbiguousNameError, AlreadyExistsError,
        RefNotFoundError.
    """
    with _open(location, namespace) as lake:
        return lake.tag(name, ref)
