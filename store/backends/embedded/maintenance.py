"""Whole-lake checks (fsck) and garbage collection for the embedded backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from store.backends.embedded import layout
from store.errors import StoreError

if TYPE_CHECKING:
    from store.backends.embedded.backend import EmbeddedBackend
    from store.backends.embedded.refdb import CommitRow


def check(backend: EmbeddedBackend) -> list[str]:
    """Verify the refs database, every commit reachable from a ref, its tree and every blob.

    Returns one line per problem; an empty list means the lake is healthy.
    """
    problems = backend.refs.integrity_problems()
    roots = list(backend.refs.branches().items()) + [
        (f"tag {name}", c) for name, c in backend.refs.tags().items()
    ]
    commits: set[str] = set()
    for name, commit_id in roots:
        if backend.refs.commit(commit_id) is None:
            problems.append(f"{name} points at missing commit {commit_id}")
            continue
        problems += _walk_commits(backend, commit_id, commits)
    checked: set[str] = set()
    for commit_id in commits:
        row = backend.refs.commit(commit_id)
        assert row is not None
        problems += _check_tree(backend, commit_id, row.tree, checked)
    for addr in backend.refs.staged_addresses():
        problems += _check_blob(backend, addr, checked, "uncommitted change")
    return problems


def _ancestry(
    backend: EmbeddedBackend, start: str, seen: set[str]
) -> Iterator[tuple[str, CommitRow | None]]:
    """Each commit reachable from ``start`` and not yet in ``seen`` (added to it), with its
    indexed row, or None when the index lacks it."""
    stack = [start]
    while stack:
        commit_id = stack.pop()
        if commit_id in seen:
            continue
        seen.add(commit_id)
        row = backend.refs.commit(commit_id)
        yield commit_id, row
        if row is not None:
            stack.extend(row.parents)


def _walk_commits(backend: EmbeddedBackend, start: str, seen: set[str]) -> list[str]:
    problems: list[str] = []
    for commit_id, row in _ancestry(backend, start, seen):
        if row is None:
            problems.append(f"missing commit {commit_id}")
            continue
        try:
            stored = backend.objects.get_bytes(layout.address(commit_id, layout.ZSTD))
            if json.loads(stored) != json.loads(row.record):
                problems.append(f"commit {commit_id}: index disagrees with stored record")
        except StoreError as exc:
            problems.append(f"commit {commit_id}: {exc}")
    return problems


def _check_tree(
    backend: EmbeddedBackend, commit_id: str, tree: str, checked: set[str]
) -> list[str]:
    if tree in checked:
        return []
    checked.add(tree)
    try:
        ranges = backend.trees.ranges(tree)
    except StoreError as exc:
        return [f"commit {commit_id}: tree {tree}: {exc}"]
    problems: list[str] = []
    for r in ranges:
        if r.id in checked:
            continue
        checked.add(r.id)
        try:
            entries = backend.trees.range_entries(r.id)
        except StoreError as exc:
            problems.append(f"range {r.id}: {exc}")
            continue
        if [e.path for e in entries] != sorted(e.path for e in entries):
            problems.append(f"range {r.id}: entries out of order")
        for entry in entries:
            if entry.inline is not None:
                if layout.content_id(entry.inline) != entry.checksum:
                    problems.append(f"{entry.path}: inline content does not match its hash")
            elif entry.address is not None:
                problems += _check_blob(backend, entry.address, checked, entry.path)
    return problems


def _check_blob(backend: EmbeddedBackend, addr: str, checked: set[str], what: str) -> list[str]:
    if addr in checked:
        return []
    checked.add(addr)
    try:
        with backend.objects.open(addr) as stream:
            while stream.read(1 << 22):
                pass
    except StoreError as exc:
        return [f"{what}: {exc}"]
    return []


def reachable(backend: EmbeddedBackend, fresh_after: float) -> set[str]:
    """Addresses of every blob reachable from a ref, a staged change, or a fresh commit."""
    roots = set(backend.refs.branches().values()) | set(backend.refs.tags().values())
    roots |= {row.id for row, created in backend.refs.all_commits() if created >= fresh_after}
    commits: set[str] = set()
    for root in roots:
        for _ in _ancestry(backend, root, commits):
            pass
    keep: set[str] = set(backend.refs.staged_addresses())
    trees: set[str] = set()
    for commit_id in commits:
        keep.add(layout.address(commit_id, layout.ZSTD))
        row = backend.refs.commit(commit_id)
        if row is not None and row.tree not in trees:
            trees.add(row.tree)
            keep.update(backend.trees.referenced(row.tree))
    return keep


def collect(backend: EmbeddedBackend, retention: timedelta) -> int:
    """Delete blobs and commit records unreachable from any ref or uncommitted change.

    Anything written within ``retention`` stays, so writers that have stored a blob but not yet
    staged or committed it are safe. Returns how many blobs were removed.
    """
    cutoff = time.time() - retention.total_seconds()
    keep = reachable(backend, cutoff)
    removed = 0
    for addr, mtime in list(backend.objects.iter_addresses()):
        if addr not in keep and mtime < cutoff:
            backend.objects.remove(addr)
            removed += 1
    _drop_commit_rows(backend, keep, cutoff)
    backend.objects.clean_temp(cutoff)
    return removed


def _drop_commit_rows(backend: EmbeddedBackend, keep: Iterable[str], cutoff: float) -> None:
    kept = set(keep)
    stale = [
        row.id
        for row, created in backend.refs.all_commits()
        if created < cutoff and layout.address(row.id, layout.ZSTD) not in kept
    ]
    with backend.refs.write() as conn:
        conn.executemany("DELETE FROM commits WHERE id = ?", [(c,) for c in stale])
