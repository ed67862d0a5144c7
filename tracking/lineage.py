"""Lineage: where a run's outputs came from, and which runs used a commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.errors import InvalidArgumentError, RefNotFoundError
from tracking import layout, views
from tracking.errors import RunNotFoundError
from tracking.index import Index
from tracking.lake_argument import require_lake
from tracking.model import Artifact, Lineage, RunRecord
from tracking.query import run_query

if TYPE_CHECKING:
    from store import Lake


def lineage(lake: Lake, target: str) -> Lineage:
    """Trace a run or a commit.

    For a run id: its input (data) commit, code (git commit and snapshot manifest), parent
    runs (its explicit parent, then every run whose output commit is in the history of its
    input commit), artifacts, and the runs that used its output. For a ref or commit made by a
    run (its start, end or merge commit): the same for that run. For any other commit: the
    runs that started from it (``used_by``) or from a descendant (``downstream_runs``).

    Raises:
        RunNotFoundError: ``target`` looks like a run id but no such run (nor ref) exists.
        RefNotFoundError: ``target`` is neither a run id nor a ref; the message says what
            ``lineage`` takes.
        InvalidArgumentError: ``lake`` is not a Lake, or ``target`` is not a non-empty string.
    """
    require_lake(lake, "tracking.lineage")
    if not isinstance(target, str) or not target:
        raise InvalidArgumentError(
            f"tracking.lineage takes a run id or a ref as a non-empty string, not {target!r}"
        )
    with Index(lake) as index:
        return _lineage(lake, index, target)


def _lineage(lake: Lake, index: Index, target: str) -> Lineage:
    where = views.scope(lake, index, None)
    rows = run_query(lake, "SELECT * FROM runs", where, index=index).to_pylist()
    runs = {row["run_id"]: RunRecord.from_row(row) for row in rows}
    run: RunRecord | None = None
    if layout.is_run_id(target) and target in runs:
        run = runs[target]
        commit = run.output_commit
    else:
        try:
            commit = lake.resolve(target)
        except (RefNotFoundError, ValueError) as exc:
            if layout.is_run_id(target):
                raise RunNotFoundError(f"no run {target} in this lake, nor a ref") from None
            raise RefNotFoundError(
                f"tracking.lineage traces a run id (32 lowercase hex digits) or a ref (branch, "
                f"tag, commit id or prefix, ref~N); {target!r} is neither: {exc}"
            ) from None
        made_by = lake.commit(commit).metadata.get("tracking.run_id")
        run = runs.get(made_by) if made_by else None
    others = [r for r in runs.values() if run is None or r.run_id != run.run_id]
    parents: list[RunRecord] = []
    if run is not None:
        if run.parent_run_id in runs:
            parents.append(runs[run.parent_run_id])
        parents += [
            r
            for r in _newest_first(others)
            if r.output_commit
            and r not in parents
            and _is_ancestor(lake, r.output_commit, run.input_commit)
        ]
    used_by, downstream = [], []
    if commit is not None:
        for r in _newest_first(others):
            if r.input_commit == commit:
                used_by.append(r)
            elif _is_ancestor(lake, commit, r.input_commit):
                downstream.append(r)
    code: tuple[tuple[str, str], ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    if run is not None:
        scope = views.run_scope(lake, index, run.run_id)
        code = tuple(
            (r["path"], r["sha256"])
            for r in run_query(
                lake, "SELECT path, sha256 FROM code ORDER BY path", scope, index=index
            ).to_pylist()
        )
        artifacts = tuple(
            Artifact(**r)
            for r in run_query(
                lake,
                "SELECT name, kind, path, size, sha256, checksum FROM artifacts ORDER BY path",
                scope,
                index=index,
            ).to_pylist()
        )
    return Lineage(
        run=run,
        commit=commit,
        input_commit=run.input_commit if run is not None else None,
        git_commit=run.git_commit if run is not None else None,
        code=code,
        parent_runs=tuple(parents),
        used_by=tuple(used_by),
        downstream_runs=tuple(downstream),
        artifacts=artifacts,
    )


def _is_ancestor(lake: Lake, ancestor: str, descendant: str) -> bool:
    try:
        return lake.merge_base(ancestor, descendant) == ancestor
    except RefNotFoundError:
        return False


def _newest_first(runs: list[RunRecord]) -> list[RunRecord]:
    return sorted(runs, key=lambda r: r.start_time, reverse=True)
