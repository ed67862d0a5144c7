"""Which paths a three-way merge conflicts on, computed from the contract alone.

Backends may fail a merge without naming the paths (lakeFS does); this lists them once, for all.
"""

from __future__ import annotations

from store.backend import Backend
from store.errors import ObjectNotFoundError


def conflicting_paths(
    backend: Backend, source: str | None, dest: str, base: str | None = None
) -> list[str]:
    """Paths that both ``source`` and ``dest`` changed since ``base``, to different contents.

    Args:
        source: commit id of the side merged in (None: the empty tree).
        dest: commit id of the destination.
        base: the merge base; computed when omitted.
    """
    if base is None and source is not None:
        base = backend.merge_base(source, dest)
    theirs = _changed(backend, base, source)
    ours = _changed(backend, base, dest)
    return sorted(
        p for p in theirs & ours if _checksum(backend, source, p) != _checksum(backend, dest, p)
    )


def _changed(backend: Backend, base: str | None, commit: str | None) -> set[str]:
    if base is not None and commit is not None:
        return {c.path for c in backend.diff(base, commit)}
    side = commit if commit is not None else base
    return {o.path for o in backend.list_objects(side)} if side is not None else set()


def _checksum(backend: Backend, commit: str | None, path: str) -> str | None:
    if commit is None:
        return None
    try:
        return backend.stat(commit, path).checksum
    except ObjectNotFoundError:
        return None
