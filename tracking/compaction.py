"""Compaction of finished runs' metric parts in the lake, as table formats compact small files.

A run writes one metric part per flush (``metrics/part-<seq>.parquet``), so a long run leaves
hundreds of small Parquet objects that every reader lists, fetches and verifies one by one.
:func:`compact` rewrites the parts of each *finished* run on a branch into one part per run,
``metrics/part-<first>-<last>.parquet`` (the sequence numbers it replaces), and deletes the old
parts, all in one commit on the branch (message and metadata say ``compaction`` and count what
moved), the way Iceberg's ``rewrite_data_files``, Delta's ``OPTIMIZE`` and DuckLake's
``merge_adjacent_files`` do.

What it guarantees:

* **Same rows.** The compacted part holds exactly the rows of the parts it replaces (values,
  steps and timestamps as stored, ``NaN`` included), sorted by ``key``, then ``step`` (nulls
  first), then ``timestamp`` with a stable sort, so each key's series keeps the order
  :func:`tracking.get_metric_history` gives. Readers read every file under ``metrics/`` alike.
* **History unchanged.** Commits are immutable: a ref older than the compaction still names the
  old parts, and reads them.
* **All or nothing.** The work happens on a private scratch branch (``Branch.transact``), merged
  into the branch as one commit; a process killed at any point leaves the branch fully old or
  fully compacted (at worst a scratch branch is left behind, as by any killed transaction).
* **Live runs are never touched.** Only runs whose recorded status is ``finished``, ``failed``
  or ``killed`` are compacted. On a run's own branch the transaction is serializable on the run
  record, so a resume that lands meanwhile makes the compaction retry and skip the run, and a
  branch with uncommitted changes there (a session writing) is skipped.
* **Concurrent writers lose nothing.** Only the parts read are deleted; a part another commit
  adds meanwhile has a new name and is kept by the merge, a part another commit changes
  conflicts and the compaction retries on the new head (``retries`` times, then
  ``ConflictError``, with nothing changed).
* **Idempotent and merge-friendly.** A run with fewer than ``min_parts`` parts is left alone, so
  a second compaction is a no-op. The compacted part's name and bytes depend only on the parts
  it replaces, so two branches compacted independently agree on it and merge without a conflict.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from store import tables
from store.errors import (
    ConcurrentUpdateError,
    ConflictError,
    DirtyBranchError,
    InvalidArgumentError,
    ObjectNotFoundError,
)
from tracking import catalog, layout, views
from tracking.lake_argument import require_lake

if TYPE_CHECKING:
    from store import Branch, Lake, ObjectInfo
    from store.branch import Isolation

#: The commit metadata value of ``tracking.event`` on a compaction's commit.
EVENT = "compaction"
#: Run statuses whose run has ended: only these runs are compacted.
ENDED = ("finished", "failed", "killed")

_SORT = pc.SortOptions(
    [
        ("key", "ascending", "at_end"),
        ("step", "ascending", "at_start"),
        ("timestamp", "ascending", "at_end"),
    ]
)


@dataclass(frozen=True)
class RunCompaction:
    """One run's metric parts, compacted (or, in a dry run, to be compacted).

    Attributes:
        run_id: the run.
        parts: how many parts were replaced.
        points: how many metric points the compacted part holds (the parts' rows together).
        path: the compacted part's path.
    """

    run_id: str
    parts: int
    points: int
    path: str


@dataclass(frozen=True)
class BranchCompaction:
    """What :func:`compact` did on one branch.

    Attributes:
        branch: the branch's full name.
        commit: the compaction's commit on the branch; None when nothing was compacted or in a
            dry run.
        runs: the runs compacted (to be compacted, in a dry run).
        skipped: ``(run_id, why)`` of runs with enough parts that were left alone (live runs,
            parts that are not plain metric parts).
        left_alone: why the whole branch was not compacted (only when compacting every branch
            of a namespace: uncommitted changes), else None.
    """

    branch: str
    commit: str | None
    runs: tuple[RunCompaction, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    left_alone: str | None = None

    @property
    def parts(self) -> int:
        """Parts replaced on this branch."""
        return sum(r.parts for r in self.runs)


def compact(
    lake: Lake,
    branch: str | None = None,
    *,
    min_parts: int = 2,
    dry_run: bool = False,
    retries: int = 3,
) -> list[BranchCompaction]:
    """Compact the metric parts of every finished run on ``branch`` into one part per run.

    Args:
        lake: the lake.
        branch: the branch to compact (any namespace you may write); None: every branch of your
            namespace (transaction scratch branches excepted), one commit each.
        min_parts: compact a run only when it has at least this many metric parts (>= 2).
        dry_run: only say what would be compacted; change nothing.
        retries: how many times to start again on the branch's new head when another commit
            conflicts with the compaction (>= 0).

    Returns:
        One :class:`BranchCompaction` per branch looked at, in branch order.

    Raises:
        BranchNotFoundError: ``branch`` does not exist (nothing is changed).
        InvalidArgumentError: ``lake`` is not a Lake, or ``min_parts`` or ``retries`` out of
            range.
        DirtyBranchError: ``branch`` (not a run's own branch) has uncommitted changes, which a
            compaction would have to merge over; commit or reset them first.
        ConflictError: other commits kept conflicting after ``retries`` retries; the branch is
            as it was.
        CorruptObjectError: a part's bytes do not match its hash.
    """
    require_lake(lake, "tracking.compact")
    if isinstance(min_parts, bool) or not isinstance(min_parts, int) or min_parts < 2:
        raise InvalidArgumentError(f"min_parts must be an int >= 2, got {min_parts!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidArgumentError(f"retries must be an int >= 0, got {retries!r}")
    if branch is not None:
        handles = [lake.get_branch(branch)]
    else:
        handles = [
            lake.get_branch(b.name)
            for b in lake.branches()
            if b.namespace == lake.namespace and not _is_scratch(b.name)
        ]
    return [
        _compact_branch(lake, handle, min_parts, dry_run, retries, explicit=branch is not None)
        for handle in handles
    ]


def _is_scratch(name: str) -> bool:
    """Whether ``name`` is a transaction's scratch branch (``<short>-tx-<12 hex digits>``)."""
    short = name.rpartition("/")[2]
    head, sep, tail = short.rpartition("-tx-")
    return bool(sep and head) and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)


@dataclass(frozen=True)
class _Plan:
    """A run to compact: its parts in sequence order, the compacted part's path and rows."""

    run_id: str
    parts: tuple[ObjectInfo, ...]
    target: str
    table: pa.Table


def _compact_branch(
    lake: Lake, handle: Branch, min_parts: int, dry_run: bool, retries: int, explicit: bool
) -> BranchCompaction:
    own = catalog.own_run(catalog.Source(handle.name, None, handle.name, "", handle.name))
    if dry_run:
        plans, skipped = _plan(lake, handle.head().id, own, min_parts)
        done = tuple(
            RunCompaction(p.run_id, len(p.parts), p.table.num_rows, p.target) for p in plans
        )
        return BranchCompaction(handle.name, None, done, skipped)
    if handle.uncommitted():
        if own is not None:  # a session of the run is writing: the run is live
            return BranchCompaction(handle.name, None, (), ((own, "live (uncommitted writes)"),))
        if explicit:
            raise DirtyBranchError(
                f"branch {handle.name} has uncommitted changes; a compaction merges into it as "
                f"one commit, so commit or reset them first"
            )
        return BranchCompaction(handle.name, None, (), (), "uncommitted changes")
    for attempt in itertools.count():
        try:
            return _attempt(lake, handle, own, min_parts)
        except DirtyBranchError:
            if own is None:
                raise
            # The run's session staged writes meanwhile (its end, or a resume): it is live.
            return BranchCompaction(handle.name, None, (), ((own, "live (uncommitted writes)"),))
        except (ConflictError, ConcurrentUpdateError, _Moved) as exc:
            if attempt >= retries:
                raise ConflictError(
                    f"compaction of {handle.name} gave up after {retries + 1} attempt(s): other "
                    f"commits kept landing on it; the branch is unchanged, try again",
                    getattr(exc, "conflicts", ()),
                ) from exc
        time.sleep(random.uniform(0, min(0.5, 0.02 * 2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class _Moved(Exception):
    """The branch moved between planning and the transaction: plan again on its new head."""


def _attempt(lake: Lake, handle: Branch, own: str | None, min_parts: int) -> BranchCompaction:
    head = handle.head().id
    plans, skipped = _plan(lake, head, own, min_parts)
    if not plans:
        return BranchCompaction(handle.name, None, (), skipped)
    done = tuple(RunCompaction(p.run_id, len(p.parts), p.table.num_rows, p.target) for p in plans)
    token = uuid.uuid4().hex
    parts, points = sum(r.parts for r in done), sum(r.points for r in done)
    message = f"compact run history: {parts} metric parts of {len(done)} run(s) into {len(done)}"
    metadata = {
        "tracking.event": EVENT,
        "tracking.compaction": token,
        "tracking.compacted_runs": str(len(done)),
        "tracking.compacted_parts": str(parts),
        "tracking.compacted_points": str(points),
    }
    if own is not None:
        # The run's own commits carry its id, so readers walking them from the branch head to
        # the run's final commit (tracking.views.output_commit) step over this one.
        metadata["tracking.run_id"] = own
    # On a run's own branch the run record is the one thing a resume changes first, so reading
    # it through a serializable transaction makes a resume that lands meanwhile a conflict.
    isolation: Isolation = "serializable" if own is not None else "merge"
    with handle.transact(message, metadata, isolation=isolation) as tx:
        if tx.head().id != head:
            raise _Moved
        if own is not None:
            _record_output_commit(lake, tx, own, handle.name, head)
        for plan in plans:
            tx.write_table(plan.target, plan.table, **layout.METRICS_PARQUET_OPTIONS)
            tx.delete(*(p.path for p in plan.parts if p.path != plan.target))
    commit = next(
        (
            c.id
            for c in lake.log(handle.name, limit=64)
            if c.metadata.get("tracking.compaction") == token
        ),
        None,
    )
    return BranchCompaction(handle.name, commit, done, skipped)


def _plan(
    lake: Lake, ref: str, own: str | None, min_parts: int
) -> tuple[list[_Plan], tuple[tuple[str, str], ...]]:
    """The runs at commit ``ref`` to compact (on a run's own branch only that run), each with
    its compacted rows, and the runs left alone with why."""
    prefix = layout.run_dir(own) + "/" if own else layout.RUNS_PREFIX
    by_run: dict[str, list[ObjectInfo]] = {}
    for info in lake.list(ref, prefix=prefix):
        split = layout.split_run_path(info.path)
        if split is not None:
            by_run.setdefault(split[0], []).append(info)
    skipped: list[tuple[str, str]] = []
    candidates: dict[str, list[ObjectInfo]] = {}
    for run_id in sorted(by_run):
        folder = layout.run_file(run_id, layout.METRICS_DIR) + "/"
        parts = [f for f in by_run[run_id] if f.path.startswith(folder)]
        if len(parts) < min_parts:
            continue
        why = _misnamed(parts)
        if why is not None:
            skipped.append((run_id, why))
            continue
        candidates[run_id] = sorted(parts, key=lambda p: layout.part_range(p.path) or (0, 0))
    records = {layout.run_file(r, layout.RUN_FILE) for r in candidates}
    found = lake.read_many(sorted(records & {f.path for fs in by_run.values() for f in fs}), ref)
    ended: dict[str, list[ObjectInfo]] = {}
    for run_id, parts in candidates.items():
        record = found.get(layout.run_file(run_id, layout.RUN_FILE))
        status = _record_status(record) if record is not None else None
        if status in ENDED:
            ended[run_id] = parts
        else:
            skipped.append((run_id, f"live (recorded status {status or 'unreadable'})"))
    plans: list[_Plan] = []
    for batch in _batches(list(ended.items())):
        read = lake.read_many([p.path for _, parts in batch for p in parts], ref)  # verified
        for run_id, parts in batch:
            tables = [t for p in parts if (t := _decode(read[p.path])) is not None]
            if len(tables) != len(parts):
                skipped.append((run_id, "a metric part does not have the metrics schema"))
                continue
            table = pa.concat_tables(tables)
            table = table.take(pc.sort_indices(table, options=_SORT)).combine_chunks()
            first, last = layout.part_range(parts[0].path), layout.part_range(parts[-1].path)
            if first is None or last is None:  # pragma: no cover - _misnamed checked every name
                continue
            target = layout.compacted_part(run_id, first[0], last[1])
            plans.append(_Plan(run_id, tuple(parts), target, table))
    return plans, tuple(sorted(skipped))


#: Parts read in one batch (one ``read_many``: overlapped requests on lakeFS).
_BATCH_PARTS = 512


def _batches(
    runs: list[tuple[str, list[ObjectInfo]]],
) -> list[list[tuple[str, list[ObjectInfo]]]]:
    """Runs grouped about :data:`_BATCH_PARTS` parts to a group (a run is never split)."""
    out: list[list[tuple[str, list[ObjectInfo]]]] = []
    size = 0
    for run in runs:
        if not out or size + len(run[1]) > _BATCH_PARTS:
            out.append([])
            size = 0
        out[-1].append(run)
        size += len(run[1])
    return out


def _misnamed(parts: list[ObjectInfo]) -> str | None:
    """Why a run's metric parts cannot be compacted by their names, or None."""
    ranges = [layout.part_range(p.path) for p in parts]
    spans = sorted(r for r in ranges if r is not None)
    if len(spans) != len(ranges):
        return "metrics/ holds files that are not metric parts"
    if any(a[1] >= b[0] for a, b in itertools.pairwise(spans)):
        return "metric parts with overlapping sequence numbers"
    return None


def _record_output_commit(lake: Lake, tx: Branch, run_id: str, branch: str, head: str) -> None:
    """Write the run's output commit into its record on its own branch, where it is empty.

    A run's end commits its final record without naming that commit; readers of the run branch
    take its head instead (:func:`tracking.views.output_commit`), which a compaction commit
    would displace. So the commit is found as readers found it before the compaction, and
    written into the record in the same transaction. The record is read through ``tx``, so a
    serializable transaction guards it (a resume changes it first).

    Raises:
        _Moved: the run is no longer ended (resumed meanwhile).
    """
    path = layout.run_file(run_id, layout.RUN_FILE)
    try:
        data = tx.read_bytes(path)
    except ObjectNotFoundError:
        raise _Moved from None
    if _record_status(data) not in ENDED:
        raise _Moved
    record = tables.read_file(data, use_threads=False)
    if "output_commit" not in record.column_names or record["output_commit"].null_count == 0:
        return
    found = views.output_commit(lake, run_id, branch, head)
    if found is None:
        return
    column = record.schema.get_field_index("output_commit")
    record = record.set_column(
        column, "output_commit", pa.array([found] * len(record), pa.string())
    )
    tx.write_table(path, record.replace_schema_metadata(None))


def _record_status(data: bytes) -> str | None:
    try:
        values = tables.read_file(data, ["status"], use_threads=False)["status"]
    except (pa.ArrowException, OSError, KeyError):
        return None
    first = values[0].as_py() if len(values) else None
    return first if isinstance(first, str) else None


def _decode(data: bytes) -> pa.Table | None:
    """A part's rows, or None when it is not exactly a metrics part (readers cast or skip such
    parts; compacting them could change what they read)."""
    try:
        table = tables.read_file(data, use_threads=False)
    except (pa.ArrowException, OSError):
        return None
    if not table.schema.equals(layout.METRICS_SCHEMA, check_metadata=False):
        return None
    return table.replace_schema_metadata(None)
