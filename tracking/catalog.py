"""Finding run data in a lake: which refs to read, and which files of which runs each holds.

A *source* is one place run data is read from: a branch (its uncommitted changes included, so
live runs show) or a commit a ref names. Without a ref every branch of every namespace is a
source, and each run is read once: from its own run branch while that exists (the freshest
state), else from the first other branch that holds it, production first.

What each source holds is listed once per commit and kept in the local index
(:mod:`tracking.index`); only branches that may hold uncommitted run files are listed afresh.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from store.errors import (
    AmbiguousRefError,
    BranchNotFoundError,
    ObjectNotFoundError,
    PermissionDeniedError,
    RefNotFoundError,
)
from tracking import layout
from tracking.errors import RunNotFoundError
from tracking.index import FileRef, Index

if TYPE_CHECKING:
    from store import Branch, Commit, Lake, ObjectInfo
    from store.model import BranchInfo


@dataclass(frozen=True)
class Source:
    """One place run data is read from.

    Attributes:
        ref: the ref as the caller named it (a branch's full name in the live view).
        namespace: the branch's namespace, or None when the ref is not a branch.
        branch: the branch's full name, or None when the ref is not a branch.
        commit: the commit read (a branch's head).
        read_ref: what to pass to the store's readers.
        protected: whether the branch is protected.
    """

    ref: str
    namespace: str | None
    branch: str | None
    commit: str
    read_ref: str
    protected: bool = False


@dataclass(frozen=True)
class RunFiles:
    """The files of one run at one source (full object paths, with checksums and sizes)."""

    run_id: str
    source: Source
    files: tuple[FileRef, ...]
    volatile: bool = False

    def path(self, relative: str) -> str:
        return layout.run_file(self.run_id, relative)

    def file(self, relative: str) -> FileRef | None:
        """The run's file at ``relative`` (``run.parquet``, ...), or None."""
        path = self.path(relative)
        return next((f for f in self.files if f.path == path), None)

    def relative(self, file: FileRef) -> str:
        return file.path[len(layout.run_dir(self.run_id)) + 1 :]


def live_sources(lake: Lake) -> list[Source]:
    """Every branch of every namespace, production first."""
    return sources_of(lake.branches(all_namespaces=True))


def sources_of(branches: Sequence[BranchInfo]) -> list[Source]:
    """One source per listed branch, in order."""
    return [_live_source(b) for b in branches]


@functools.lru_cache(maxsize=1 << 16)
def _live_source(b: BranchInfo) -> Source:
    # Memoized: building 10,000 frozen dataclasses costs more than the branch listing itself.
    return Source(b.name, b.namespace, b.name, b.head, b.name, b.protected)


def ref_sources(lake: Lake, refs: Sequence[str]) -> list[Source]:
    """One source per ref, in order.

    Raises:
        RefNotFoundError: a ref does not resolve.
    """
    out = []
    branches = {b.name: b for b in lake.branches(all_namespaces=True)}
    for ref in refs:
        commit = lake.resolve(ref)
        info = branches.get(ref)
        if info is None:
            try:
                info = branches.get(lake.get_branch(ref).name)
            except (BranchNotFoundError, ValueError):
                info = None
        if info is not None and info.head == commit:
            out.append(Source(ref, info.namespace, info.name, commit, info.name, info.protected))
        else:
            out.append(Source(ref, None, None, commit, commit))
    return out


def own_run(source: Source) -> str | None:
    """The run id whose own branch ``source`` is, or None."""
    return _own_run(source.branch or "")


@functools.lru_cache(maxsize=1 << 16)
def _own_run(branch: str) -> str | None:
    short = branch.rpartition("/")[2]
    # Cheap tests first, and memoized: this runs for every branch of the lake on every query.
    if len(short) != len(layout.RUN_BRANCH_PREFIX) + 32 or not short.startswith(
        layout.RUN_BRANCH_PREFIX
    ):
        return None
    run_id = short[len(layout.RUN_BRANCH_PREFIX) :]
    return run_id if layout.is_run_id(run_id) else None


def find_runs(lake: Lake, index: Index, sources: Sequence[Source], live: bool) -> list[RunFiles]:
    """The runs each source holds. With ``live``, each run once (see the module docstring).

    Committed listings come from ``index`` (by commit id, so they are reused while a branch
    does not move). A branch's uncommitted files are listed from the lake when they can matter:
    on a run's own branch while its committed record says ``running`` (a live or killed run
    flushes metrics without committing) and on other branches when they have uncommitted
    changes under ``_flowlake/runs/``.
    """
    own = {s.ref: own_run(s) for s in sources} if live else {}
    keys = {s.ref: _prefix(own.get(s.ref)) for s in sources}
    cached = index.listings([(s.commit, keys[s.ref]) for s in sources])
    missing = {
        (s.commit, keys[s.ref]): [FileRef(o.path, o.checksum, o.size) for o in listing]
        for s in sources
        if (s.commit, keys[s.ref]) not in cached
        and own.get(s.ref)
        and (listing := _list(lake, s.commit, keys[s.ref])) is not None
    }
    if missing:
        index.remember_listings(missing)
        cached.update(missing)
    listings: dict[str, list[FileRef]] = {}
    for source in sources:
        key = (source.commit, keys[source.ref])
        if own.get(source.ref):
            if key in cached:
                listings[source.ref] = cached[key]
        elif source.branch is not None and dirty(lake, source.branch):
            fresh = _list(lake, source.read_ref, layout.RUNS_PREFIX)
            if fresh is not None:
                listings[source.ref] = [FileRef(o.path, o.checksum, o.size) for o in fresh]
        else:
            try:
                listings[source.ref] = cached.get(key) or index.listing(*key)
            except (PermissionDeniedError, RefNotFoundError):
                continue
    refreshed = _refresh_running(lake, index, sources, own, listings) if live else set()
    return _group(sources, listings, own, live, refreshed)


def _refresh_running(
    lake: Lake,
    index: Index,
    sources: Sequence[Source],
    own: dict[str, str | None],
    listings: dict[str, list[FileRef]],
) -> set[str]:
    """Replace the committed listing of each run branch whose run may have uncommitted files
    (no committed record yet, or a committed record saying ``running``) by a fresh one;
    returns the refs of those sources."""
    refreshed: set[str] = set()
    records: dict[str, FileRef] = {}
    for s in sources:
        if own.get(s.ref):
            found = [f for f in listings.get(s.ref, []) if f.path.endswith("/" + layout.RUN_FILE)]
            if found:
                records[s.ref] = found[0]
    status = record_statuses(index, [(s, records[s.ref]) for s in sources if s.ref in records])
    for source in sources:
        run_id = own.get(source.ref)
        if not run_id:
            continue
        record = records.get(source.ref)
        if record is not None and status.get(record.checksum, "running") != "running":
            continue
        fresh = _list(lake, source.read_ref, _prefix(run_id))
        refreshed.add(source.ref)
        if fresh is not None:
            listings[source.ref] = [FileRef(o.path, o.checksum, o.size) for o in fresh]
    return refreshed


#: Columns a run record must have to be used (others missing are read as nulls).
RUN_RECORD_REQUIRED = ("run_id", "status")


def record_statuses(
    index: Index, records: Sequence[tuple[Source, FileRef]]
) -> dict[str, str | None]:
    """The recorded ``status`` of each ``run.parquet`` object (by checksum), loading the ones
    the index does not have yet (as the ``runs`` view reads them)."""
    known = index.loaded("runs", (f.checksum for _, f in records))
    missing = [(f, s.read_ref) for s, f in records if f.checksum not in known]
    if missing:
        index.load("runs", layout.RUN_SCHEMA, missing, RUN_RECORD_REQUIRED)
        known = index.loaded("runs", (f.checksum for _, f in records))
    return {checksum: state.status for checksum, state in known.items()}


def _group(
    sources: Sequence[Source],
    listings: dict[str, list[FileRef]],
    own: dict[str, str | None],
    live: bool,
    refreshed: set[str],
) -> list[RunFiles]:
    owner = {run_id: ref for ref, run_id in own.items() if run_id}
    out = []
    chosen: set[str] = set()
    for source in sources:
        by_run: dict[str, list[FileRef]] = {}
        for file in listings.get(source.ref, []):
            split = layout.split_run_path(file.path)
            if split is not None:
                by_run.setdefault(split[0], []).append(file)
        for run_id, files in by_run.items():
            if live:
                if run_id in chosen or owner.get(run_id, source.ref) != source.ref:
                    continue
                chosen.add(run_id)
            if any(f.path.endswith("/" + layout.RUN_FILE) for f in files):
                out.append(RunFiles(run_id, source, tuple(files), source.ref in refreshed))
    return out


def _prefix(run_id: str | None) -> str:
    # A run branch also holds every run merged before it was created; those are read from
    # their own branches, so list only its own run's folder.
    return layout.run_dir(run_id) + "/" if run_id else layout.RUNS_PREFIX


def _list(lake: Lake, ref: str, prefix: str) -> list[ObjectInfo] | None:
    try:
        return lake.list(ref, prefix=prefix)
    except (PermissionDeniedError, BranchNotFoundError, RefNotFoundError):
        return None  # not readable by this user, or deleted since the branch listing


def dirty(lake: Lake, branch: str) -> bool:
    """Whether ``branch`` has uncommitted changes under ``_flowlake/runs/``."""
    try:
        changes = lake.get_branch(branch).uncommitted()
    except (PermissionDeniedError, BranchNotFoundError, ValueError):
        return False
    return any(c.path.startswith(layout.RUNS_PREFIX) for c in changes)


def reachable_commits(
    lake: Lake, sources: Sequence[Source], live: bool
) -> list[tuple[Source, Commit]]:
    """Every commit reachable from each source's commit, each with the first source reaching it.

    With ``live`` each commit appears once overall; otherwise once per source.
    """
    cache: dict[str, Commit] = {}
    out: list[tuple[Source, Commit]] = []
    seen: set[str] = set()
    for source in sources:
        if not live:
            seen = set()
        stack = [source.commit]
        while stack:
            commit_id = stack.pop()
            if commit_id in seen:
                continue
            seen.add(commit_id)
            commit = cache.get(commit_id)
            if commit is None:
                try:
                    commit = cache[commit_id] = lake.commit(commit_id)
                except RefNotFoundError:
                    continue
            out.append((source, commit))
            stack.extend(commit.parents)
    return out


def heartbeat_time(lake: Lake, ref: str, run_id: str) -> datetime | None:
    """When run ``run_id`` last wrote its heartbeat, as seen at ``ref``; None when never."""
    try:
        beat = json.loads(lake.read_bytes(layout.run_file(run_id, layout.HEARTBEAT_FILE), ref))
        return datetime.fromtimestamp(float(beat["time"]), UTC)
    except (ObjectNotFoundError, ValueError, KeyError, TypeError):
        return None


#: The fewest hex digits a run id prefix may have (``flowlake runs`` shows 8).
MIN_RUN_PREFIX = 4


def complete_run_id(lake: Lake, text: str) -> str:
    """The run id ``text`` is, or a unique prefix of (at least :data:`MIN_RUN_PREFIX` hex
    digits, as ``flowlake runs`` shows them), looked up among the run branches of every
    namespace; a full id is returned as it is.

    Raises:
        RunNotFoundError: no run starts with ``text``, or it is not hex digits.
        AmbiguousRefError: several runs do (the message names them).
    """
    if layout.is_run_id(text):
        return text
    if not (
        isinstance(text, str)
        and MIN_RUN_PREFIX <= len(text) < 32
        and all(c in "0123456789abcdef" for c in text)
    ):
        raise RunNotFoundError(
            f"{text!r} is not a run id (32 lowercase hex digits, or a unique prefix of at "
            f"least {MIN_RUN_PREFIX})"
        )
    start = layout.run_branch_short(text)
    found = sorted(
        {
            short[len(layout.RUN_BRANCH_PREFIX) :]
            for info in lake.branches(all_namespaces=True)
            if (short := info.name.rsplit("/", 1)[-1]).startswith(start)
            and layout.is_run_id(short[len(layout.RUN_BRANCH_PREFIX) :])
        }
    )
    if not found:
        raise RunNotFoundError(f"no run id starts with {text}")
    if len(found) > 1:
        raise AmbiguousRefError(
            f"{len(found)} runs start with {text}: {', '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}; give more digits"
        )
    return found[0]


def find_run_branch(lake: Lake, run_id: str) -> Branch:
    """The branch a run writes on, in whichever namespace started it: the current namespace's
    is looked up first (one lookup instead of listing every branch of the lake).

    Raises:
        RunNotFoundError: no such run branch (or ``run_id`` is not a run id).
    """
    if not layout.is_run_id(run_id):
        raise RunNotFoundError(f"{run_id!r} is not a run id (32 lowercase hex digits)")
    short = layout.run_branch_short(run_id)
    with contextlib.suppress(BranchNotFoundError, RefNotFoundError, ValueError):
        return lake.get_branch(f"{lake.namespace}/{short}")
    for info in lake.branches(all_namespaces=True):
        if info.name.rsplit("/", 1)[-1] == short:
            try:
                return lake.get_branch(info.name)
            except BranchNotFoundError:
                break
    raise RunNotFoundError(f"no run {run_id} in this lake")


def run_source(lake: Lake, run_id: str, index: Index | None = None) -> Source:
    """The run's own branch as a source.

    With ``index``, the branch the run was last seen on is tried first (two lookups instead of
    listing every branch of the lake); the full search follows when it is gone. A run whose own
    branch was deleted is read from the first branch holding its record, as the live view
    reads it.

    Raises:
        RunNotFoundError: no such run.
    """
    known = index.run_branch(run_id) if index is not None else None
    if known is not None:
        try:
            branch = lake.get_branch(known)
            return Source(branch.name, branch.namespace, branch.name, branch.head().id, branch.name)
        except (BranchNotFoundError, RefNotFoundError, ValueError):
            pass
    try:
        branch = find_run_branch(lake, run_id)
    except RunNotFoundError:
        merged = _holding_branch(lake, run_id)
        if merged is None:
            raise
        return merged
    return Source(branch.name, branch.namespace, branch.name, branch.head().id, branch.name)


def _holding_branch(lake: Lake, run_id: str) -> Source | None:
    """The first branch, production first, other than run branches, that holds the run's
    record: where the live view reads a run whose own branch was deleted after its merge."""
    path = layout.run_file(run_id, layout.RUN_FILE)
    for info in lake.branches(all_namespaces=True):
        if _own_run(info.name) is not None:
            continue
        with contextlib.suppress(ObjectNotFoundError, PermissionDeniedError, RefNotFoundError):
            lake.stat(path, ref=info.name)
            return _live_source(info)
    return None
