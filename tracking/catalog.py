"""Finding run data in a lake: which refs to read, and which files of which runs each holds.

A *source* is one place run data is read from: a branch (its uncommitted changes included, so
live runs show) or a commit a ref names. Without a ref every branch of every namespace is a
source, and each run is read once: from its own run branch while that exists (the freshest
state), else from the first other branch that holds it, production first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from store.errors import (
    BranchNotFoundError,
    ObjectNotFoundError,
    PermissionDeniedError,
    RefNotFoundError,
)
from tracking import layout
from tracking.errors import RunNotFoundError

if TYPE_CHECKING:
    from store import Branch, Commit, Lake


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
    """The files of one run at one source: object paths relative to the run's folder."""

    run_id: str
    source: Source
    files: tuple[str, ...]

    def path(self, relative: str) -> str:
        return layout.run_file(self.run_id, relative)


def live_sources(lake: Lake) -> list[Source]:
    """Every branch of every namespace, production first."""
    return [
        Source(b.name, b.namespace, b.name, b.head, b.name, b.protected)
        for b in lake.branches(all_namespaces=True)
    ]


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


def find_runs(lake: Lake, sources: Iterable[Source], live: bool) -> list[RunFiles]:
    """The runs each source holds. With ``live``, each run once (see the module docstring)."""
    found: dict[tuple[str, str], list[str]] = {}
    source_of: dict[tuple[str, str], Source] = {}
    own: dict[str, Source] = {}
    order: list[tuple[str, str]] = []
    for source in sources:
        short = (source.branch or "").rsplit("/", 1)[-1]
        own_run = short[len(layout.RUN_BRANCH_PREFIX) :] if live else ""
        if live and short.startswith(layout.RUN_BRANCH_PREFIX) and layout.is_run_id(own_run):
            # A run branch also holds every run merged before it was created; those are read
            # from their own branches, so list only its own run's folder.
            prefix = layout.run_dir(own_run) + "/"
            own[own_run] = source
        else:
            prefix = layout.RUNS_PREFIX
        try:
            listing = lake.list(source.read_ref, prefix=prefix)
        except (PermissionDeniedError, BranchNotFoundError):
            continue  # not readable by this user, or deleted since the branch listing
        for info in listing:
            split = layout.split_run_path(info.path)
            if split is None:
                continue
            key = (source.ref, split[0])
            if key not in found:
                found[key] = []
                source_of[key] = source
                order.append(key)
            found[key].append(split[1])
    out = []
    chosen: set[str] = set()
    for key in order:
        run_id = key[1]
        source = source_of[key]
        if live:
            if run_id in chosen or (run_id in own and own[run_id] is not source):
                continue
            chosen.add(run_id)
        if layout.RUN_FILE in found[key]:
            out.append(RunFiles(run_id, source, tuple(found[key])))
    return out


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


def find_run_branch(lake: Lake, run_id: str) -> Branch:
    """The branch a run writes on, in whichever namespace started it.

    Raises:
        RunNotFoundError: no such run branch (or ``run_id`` is not a run id).
    """
    if not layout.is_run_id(run_id):
        raise RunNotFoundError(f"{run_id!r} is not a run id (32 lowercase hex digits)")
    short = layout.run_branch_short(run_id)
    for info in lake.branches(all_namespaces=True):
        if info.name.rsplit("/", 1)[-1] == short:
            try:
                return lake.get_branch(info.name)
            except BranchNotFoundError:
                break
    raise RunNotFoundError(f"no run {run_id} in this lake")


def run_source(lake: Lake, run_id: str) -> Source:
    """The run's own branch as a source.

    Raises:
        RunNotFoundError: no such run.
    """
    branch = find_run_branch(lake, run_id)
    return Source(branch.name, branch.namespace, branch.name, branch.head().id, branch.name)
