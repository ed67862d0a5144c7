"""Whole-lake checks (fsck) and garbage collection for the embedded backend.

gc is safe beside live writers: it marks what is reachable without holding anything, then
deletes in short batches, each under the exclusive gc lock (``gclock.py``) and after bringing
the marks up to date with whatever was staged or committed meanwhile. A write holds the lock
shared from its first stored object to the transaction that references it, so under the
exclusive lock every write has either finished (and its references are seen) or not yet begun
(and will store the objects it needs again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from store.backends.embedded import layout
from store.errors import RefsDatabaseError, SharedObjectsError, StoreError

if TYPE_CHECKING:
    from store.backends.embedded.backend import EmbeddedBackend

T = TypeVar("T")
#: Longest time one gc batch keeps writers waiting (seconds).
BATCH_S = 0.5


# -- fsck --------------------------------------------------------------------------------------


def check(backend: EmbeddedBackend) -> list[str]:
    """Verify the refs database, every commit reachable from a ref, its tree and every blob.

    A commit's record lives in its index row only (lakes written before that also hold it as
    an object, which is no longer read): the record must hash to the commit id, and the row's
    tree, parents and generation columns must agree with it; the ancestry is walked along both.
    Damage of any kind (an unreadable table, a row with impossible values, a missing row, a
    record that does not hash to its id) becomes a problem line, never an exception.

    Returns:
        One line per problem; an empty list means the lake is healthy.
    """
    refs = backend.refs
    problems = refs.integrity_problems()
    problems += _guarded(problems, refs.damaged_rows, [])
    branches = _guarded(problems, refs.branches, None)
    tags = _guarded(problems, refs.tags, dict[str, str]())
    if branches is None:
        branches = {}  # unreadable: reported above; check what the tags still reach
    elif backend.default_branch not in branches:
        problems.append(f"production branch {backend.default_branch!r} is missing")
    elif backend.default_branch not in _guarded(problems, refs.protected, set[str]()):
        problems.append(f"production branch {backend.default_branch!r} is not protected")
    roots = [(f"branch {name!r}", c) for name, c in branches.items()]
    roots += [(f"tag {name!r}", c) for name, c in tags.items()]
    trees: dict[str, set[str]] = {}
    for name, commit_id in roots:
        try:
            missing = refs.commit(commit_id) is None
        except RefsDatabaseError:
            missing = False  # a damaged row: the walk says so, and follows its record
        if missing:
            problems.append(f"{name} points at missing commit {commit_id!r}")
            continue
        problems += _walk_commits(backend, commit_id, trees)
    checked: set[str] = set()
    for commit_id, commit_trees in trees.items():
        for tree in sorted(commit_trees):
            problems += _check_tree(backend, commit_id, tree, checked)
    staged, _ = _guarded(problems, backend.staged_addresses, (set[str](), 0))
    for addr in sorted(staged):
        problems += _check_blob(backend, addr, checked, "uncommitted change")
    return problems


def _guarded(problems: list[str], read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` with the refs database error added to ``problems``."""
    try:
        return read()
    except RefsDatabaseError as exc:
        problems.append(str(exc))
        return default


def _walk_commits(backend: EmbeddedBackend, start: str, trees: dict[str, set[str]]) -> list[str]:
    """Check each commit reachable from ``start`` and not yet in ``trees``, adding it there
    with the trees its index columns and its record name."""
    problems: list[str] = []
    stack = [start]
    while stack:
        commit_id = stack.pop()
        if commit_id in trees:
            continue
        trees[commit_id] = set()
        try:
            row = backend.refs.commit(commit_id)
        except RefsDatabaseError as exc:
            problems.append(str(exc))
            # The record is the commit's only copy: when it still hashes to the id, its
            # parents and tree are walked, so damage further down is reported too.
            stack.extend(_record_links(backend, commit_id, trees[commit_id]))
            continue
        if row is None:
            problems.append(f"missing commit {commit_id}: no index row")
            continue
        stack.extend(row.parents)
        trees[commit_id].add(row.tree)
        if layout.content_id(row.record) != commit_id:
            # Not the record the id was made from: neither its parents nor its tree are
            # followed, and the columns cannot be checked against it.
            problems.append(f"commit {commit_id}: its record does not hash to its id")
            continue
        try:
            record = json.loads(row.record)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            problems.append(f"commit {commit_id}: its record is not a commit record ({exc})")
            continue
        parents = tuple(record.get("parents", ()))
        stack.extend(p for p in parents if isinstance(p, str))
        if isinstance(record.get("tree"), str):
            trees[commit_id].add(record["tree"])
        mismatched = [
            column
            for column, indexed, hashed in (
                ("tree", row.tree, record.get("tree")),
                ("parents", row.parents, parents),
                ("generation", row.generation, record.get("generation")),
            )
            if indexed != hashed
        ]
        if mismatched:
            problems.append(
                f"commit {commit_id}: index disagrees with the stored record "
                f"({', '.join(mismatched)})"
            )
    return problems


def _record_links(backend: EmbeddedBackend, commit_id: str, trees: set[str]) -> list[str]:
    """The parents a damaged row's record names, adding the tree it names to ``trees``; none
    when the record cannot be read or does not hash to ``commit_id``."""
    try:
        data = backend.refs.commit_record(commit_id)
    except RefsDatabaseError:
        return []
    if data is None or layout.content_id(data) != commit_id:
        return []
    try:
        record = json.loads(data)
    except ValueError:
        return []
    if not isinstance(record, dict):
        return []
    if isinstance(record.get("tree"), str):
        trees.add(record["tree"])
    parents = record.get("parents")
    return [p for p in parents if isinstance(p, str)] if isinstance(parents, list) else []


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


# -- gc ----------------------------------------------------------------------------------------


class Reachable:
    """Everything gc must keep, marked once and then brought up to date incrementally.

    Roots are branch heads, tags, commits indexed at or after ``fresh_after`` and staged
    changes. A commit's parents and tree are taken from both its index row and the record in
    that row, so a damaged column cannot hide an object from the marks. Commit records live in
    their rows, not in objects: a commit object that a lake written before that change holds
    is never marked, so gc removes it once it is older than the retention.
    """

    def __init__(self, backend: EmbeddedBackend, fresh_after: float) -> None:
        self._backend = backend
        self._fresh_after = fresh_after
        self.commits: set[str] = set()
        self.addresses: set[str] = set()
        self._trees: set[str] = set()
        self._ranges: set[str] = set()
        self._staged_seq = 0

    def update(self) -> None:
        """Mark what became reachable since the last call.

        Raises:
            RefsDatabaseError: a reachable commit has no index row, or a row is damaged: gc
                must not guess, so it stops (``flowlake fsck`` says what is wrong).
            StoreError: a reachable tree cannot be read.
        """
        refs = self._backend.refs
        roots = set(refs.branches().values()) | set(refs.tags().values())
        roots |= set(refs.commit_ids_since(self._fresh_after))
        for root in roots - self.commits:
            self._mark_ancestry(root)
        staged, self._staged_seq = self._backend.staged_addresses(self._staged_seq)
        self.addresses |= staged

    def _mark_ancestry(self, start: str) -> None:
        stack = [start]
        while stack:
            commit_id = stack.pop()
            if commit_id in self.commits:
                continue
            row = self._backend.refs.commit(commit_id)
            if row is None:
                raise RefsDatabaseError(
                    f"commit {commit_id} is reachable but has no index row; gc stopped without "
                    "deleting anything more: run `flowlake fsck`"
                )
            try:
                record = json.loads(row.record)
                trees = {row.tree, record["tree"]}
                parents = set(row.parents) | set(record["parents"])
            except (ValueError, KeyError, TypeError):
                raise RefsDatabaseError(
                    f"commit {commit_id}: the record in its index row is damaged; gc stopped: "
                    "run `flowlake fsck`"
                ) from None
            self.commits.add(commit_id)
            for tree in trees:
                self._mark_tree(tree)
            stack.extend(parents)

    def _mark_tree(self, tree: str) -> None:
        if tree in self._trees:
            return
        trees = self._backend.trees
        ranges = trees.ranges(tree)
        self.addresses.add(layout.address(tree, layout.ZSTD))
        for r in ranges:
            if r.id in self._ranges:
                continue
            self.addresses.add(layout.address(r.id, layout.ZSTD))
            self.addresses.update(
                e.address for e in trees.range_entries(r.id) if e.address is not None
            )
            self._ranges.add(r.id)
        self._trees.add(tree)


def collect(backend: EmbeddedBackend, retention: timedelta, exclusive_objects: bool) -> int:
    """Delete objects and commit rows unreachable from any ref or uncommitted change (and the
    commit objects of lakes written when commit records were objects too: their rows hold
    the same records).

    Safe beside live writers whatever the retention (see the module docstring): ``retention``
    is a grace period for unreachable data (undo a reset or a deleted branch), not a guard
    against writers.

    Returns:
        How many objects were removed.

    Raises:
        SharedObjectsError: the objects live outside the lake folder and ``exclusive_objects``
            was not given.
        RefsDatabaseError: the refs database is damaged (nothing more is deleted).
    """
    if backend.objects_external and not exclusive_objects:
        raise SharedObjectsError(
            f"gc refused: this lake keeps its objects at {backend.objects_location}, outside "
            "its folder, where other lakes (or copies of this one) may keep objects too; gc "
            "sees only this lake's references and could delete theirs. If no other lake uses "
            "that location, run gc with exclusive_objects=True (CLI: --exclusive-objects)."
        )
    cutoff = time.time() - retention.total_seconds()
    reachable = Reachable(backend, cutoff)
    reachable.update()
    candidates = [
        addr
        for addr, mtime in backend.objects.iter_addresses()
        if mtime < cutoff and addr not in reachable.addresses
    ]
    removed = 0
    pending = iter(candidates)
    first = True
    exhausted = False
    while not exhausted:
        with backend.lock.collecting():
            reachable.update()
            if first:
                # Rows first: once a commit is no longer indexed nobody can branch from it,
                # so its objects may go.
                _drop_commit_rows(backend, reachable.commits, cutoff)
                backend.objects.clean_temp(cutoff)
                first = False
            deadline = time.monotonic() + BATCH_S
            while time.monotonic() < deadline:
                addr = next(pending, None)
                if addr is None:
                    exhausted = True
                    break
                if addr not in reachable.addresses:
                    backend.objects.remove(addr)
                    removed += 1
    return removed


def _drop_commit_rows(backend: EmbeddedBackend, reachable: set[str], cutoff: float) -> None:
    stale = [c for c in backend.refs.commit_ids_before(cutoff) if c not in reachable]
    with backend.refs.write() as conn:
        conn.executemany("DELETE FROM commits WHERE id = ?", [(c,) for c in stale])
    backend.forget_commits()
