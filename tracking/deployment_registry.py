"""Deployments: a branch's model serving live traffic next to production, and its outcomes.

>>> dep = tracking.deploy(lake, "cand", branch="lr-sweep", model="models/clf")  # doctest: +SKIP
>>> dep.log_metric("accuracy", 1.0, segment="mobile")                         # doctest: +SKIP
>>> dep.flush()                                                               # doctest: +SKIP

A deployment pins the commit its branch had when it was deployed; later commits on the branch do
not change what it serves. Its record and its metrics live on its own branch (see
:mod:`tracking.deployment_layout`), so several deployments are isolated from one another and
from the data they serve. ``production`` exists in every lake and follows ``main``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from store.errors import (
    AlreadyExistsError,
    BranchNotFoundError,
    InvalidArgumentError,
    InvalidNameError,
    NothingToCommitError,
    ObjectNotFoundError,
)
from tracking import buffer, exits, points
from tracking import deployment_layout as layout
from tracking.deployment_errors import DeploymentNotFoundError, DeploymentStateError
from tracking.errors import InvalidMetricError
from tracking.lake_argument import require_lake

if TYPE_CHECKING:
    from collections.abc import Iterator

    from store import Branch, Lake

DEFAULT_FLUSH_INTERVAL = 10.0
#: A flush starts early once this many points wait.
MAX_BUFFERED_POINTS = 200_000
#: How far in the future a ``deployed_at`` may lie (another machine's clock running ahead).
MAX_CLOCK_SKEW = timedelta(minutes=1)

#: One buffered point: key, value, step, timestamp (Unix seconds), segment.
DeploymentPoint = tuple[str, float, "int | None", float, "str | None"]


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment as recorded.

    Attributes:
        name: the deployment's name (unique in the lake).
        branch: the full name of the branch it was deployed from (``main`` for production).
        commit: the commit it serves: pinned at deploy time; production's is ``main``'s head
            when the record was read.
        model: the model's object path at that commit, or None.
        user: who deployed it.
        deployed_at: when it went live (UTC). For production: when the model it serves now
            went live, i.e. the latest promotion into ``main`` (:func:`serving_since`); None
            when nothing was ever promoted (production has served ``main`` since the lake began).
        status: ``live``, ``promoted`` or ``retired``.
        ended_at: when it stopped being live (promoted or retired), else None.
        merge_commit: the commit on ``main`` that promoted it, if any.
    """

    name: str
    branch: str
    commit: str
    model: str | None
    user: str
    deployed_at: datetime | None
    status: str
    ended_at: datetime | None = None
    merge_commit: str | None = None

    @property
    def is_production(self) -> bool:
        return self.name == layout.PRODUCTION

    def to_row(self) -> dict[str, Any]:
        return {
            "format_version": layout.FORMAT_VERSION,
            "deployment": self.name,
            "branch": self.branch,
            "commit": self.commit,
            "model": self.model,
            "user": self.user,
            "deployed_at": self.deployed_at,
            "status": self.status,
            "ended_at": self.ended_at,
            "merge_commit": self.merge_commit,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeploymentRecord:
        return cls(
            name=row["deployment"],
            branch=row["branch"],
            commit=row["commit"],
            model=row["model"],
            user=row["user"],
            deployed_at=row["deployed_at"],
            status=row["status"],
            ended_at=row["ended_at"],
            merge_commit=row["merge_commit"],
        )


class Deployment:
    """A live deployment: its record and a buffered logger of its outcomes.

    Build it with :func:`deploy` or :func:`deployment`. Points are buffered in memory and
    written as Parquet parts (committed on the deployment's branch) every ``flush_interval``
    seconds by a background thread, when :meth:`flush` is called, and at interpreter exit.
    """

    def __init__(
        self, lake: Lake, record: DeploymentRecord, flush_interval: float = DEFAULT_FLUSH_INTERVAL
    ) -> None:
        self._lake = lake
        self._record = record
        self._buffer = buffer.MetricBuffer()
        self._pending: list[Any] = []
        self._lock = threading.RLock()
        self._flush_interval = flush_interval
        self._flusher: buffer.Flusher | None = None

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, branch={self.branch!r}, status={self.status!r})"

    @property
    def record(self) -> DeploymentRecord:
        return self._record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def branch(self) -> str:
        return self._record.branch

    @property
    def commit(self) -> str:
        """The commit served: pinned at deploy time (production: ``main``'s head when read)."""
        return self._record.commit

    @property
    def model(self) -> str | None:
        return self._record.model

    @property
    def user(self) -> str:
        return self._record.user

    @property
    def deployed_at(self) -> datetime | None:
        return self._record.deployed_at

    @property
    def status(self) -> str:
        return self._record.status

    # -- logging ---------------------------------------------------------------------------------

    def log_metric(
        self,
        key: str,
        value: float,
        step: int | None = None,
        timestamp: int | float | datetime | None = None,
        segment: str | None = None,
    ) -> None:
        """Record one live outcome. Buffered; checked now, so a bad point is never written.

        Args:
            key: the metric name.
            value: a finite real number (``bool`` counts as 0/1).
            step: a non-negative integer (a request or case number), or None.
            timestamp: milliseconds since the epoch (as for runs) or a ``datetime``;
                default now.
            segment: the traffic segment this outcome belongs to (``mobile``, ``eu`` ...).

        Raises:
            InvalidMetricError: a bad key, segment, step or timestamp, or a value that is
                NaN, infinite or not a number (checked as run metrics are, by
                :mod:`tracking.points`; an ``InvalidArgumentError``).
            DeploymentStateError: the deployment is no longer live.
        """
        self._check_live()
        self._buffer.append(_point(key, value, step, timestamp, segment))  # type: ignore[arg-type]
        self._start_flusher()

    def log_metrics(
        self,
        metrics: dict[str, float],
        step: int | None = None,
        timestamp: int | float | datetime | None = None,
        segment: str | None = None,
    ) -> None:
        """Record several outcomes with the same step, time and segment; all are checked
        before any is buffered. Raises as :meth:`log_metric`."""
        self._check_live()
        if not isinstance(metrics, dict):
            raise InvalidArgumentError(f"metrics must be a dict, got {type(metrics).__name__}")
        stamp = _seconds(timestamp)
        checked = [_point(k, v, step, stamp * 1000, segment) for k, v in metrics.items()]
        for point in checked:
            self._buffer.append(point)  # type: ignore[arg-type]
        self._start_flusher()

    def flush(self) -> None:
        """Write every buffered point now, as one Parquet part committed on the deployment's
        branch (created from ``main`` for production's first write).

        Raises:
            StoreError: the store refused the write (the points stay buffered for a retry).
        """
        with self._lock:
            chunk = self._pending + self._buffer.drain()  # type: ignore[operator]
            if not chunk:
                return
            self._pending = chunk
            branch = self._data_branch()
            table = _to_table(self.name, chunk)
            micros = int(time.time() * 1e6)
            path = layout.metrics_part(self.name, micros, uuid.uuid4().hex[:12])
            branch.write_table(path, table, **layout.METRICS_PARQUET_OPTIONS)
            _commit(branch, f"deployment {self.name}: {len(chunk)} points")
            self._pending = []

    def close(self) -> None:
        """Stop the background flusher and write what is buffered."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.stop()
            exits.unregister(self.close)
        self.flush()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_flusher(self) -> None:
        if self._flusher is not None:
            return
        with self._lock:
            if self._flusher is None:
                self._flusher = buffer.Flusher(
                    self.flush,
                    lambda: None,
                    lambda: len(self._buffer) >= MAX_BUFFERED_POINTS,
                    self._flush_interval,
                    math.inf,
                )
                self._flusher.start()
                exits.register(self.close)

    def _check_live(self) -> None:
        if self._record.status != "live":
            raise DeploymentStateError(
                f"deployment {self.name!r} is {self._record.status}; it takes no more outcomes"
            )

    def _data_branch(self) -> Branch:
        name = f"production/{layout.branch_name(self.name)}"
        try:
            return self._lake.get_branch(name)
        except BranchNotFoundError:
            if not self._record.is_production:
                raise
        branch = self._lake.branch(name, source=_root(self._lake), exist_ok=True)
        if not branch.exists(layout.record_file(self.name)):
            _write_record(branch, self._record)
        return branch


# -- the public functions ------------------------------------------------------------------------


def deploy(
    lake: Lake,
    name: str,
    branch: str,
    model: str | None = None,
    *,
    deployed_at: datetime | None = None,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
) -> Deployment:
    """Deploy ``branch``'s current head under ``name``, next to production.

    Args:
        lake: the lake.
        name: a unique deployment name (letters, digits, ``-``, ``_``; not ``production``).
        branch: the branch to serve; its head now is pinned.
        model: the model's object path (a file, or a folder prefix) at that commit.
        deployed_at: when it went live (default now; set it to backfill or simulate traffic).
        flush_interval: seconds between background writes of logged outcomes.

    Returns:
        The live deployment.

    Raises:
        InvalidNameError: a bad name, or ``production``.
        AlreadyExistsError: a deployment of that name exists (live, promoted or retired).
        BranchNotFoundError: no such branch.
        ObjectNotFoundError: ``model`` is not a file or folder at the pinned commit.
        InvalidArgumentError: ``lake`` is not a Lake, or ``deployed_at`` is not a datetime or
            lies in the future (beyond a minute of clock skew).
    """
    require_lake(lake, "tracking.deploy")
    _check_name(name)
    if name == layout.PRODUCTION:
        raise InvalidNameError("'production' is the deployment of main; pick another name")
    if not isinstance(branch, str) or not branch:
        raise InvalidArgumentError("give the branch to deploy, e.g. branch='lr-sweep'")
    if not flush_interval > 0:
        raise InvalidArgumentError("flush_interval must be positive")
    now = datetime.now(UTC)
    if deployed_at is not None and _utc(deployed_at) > now + MAX_CLOCK_SKEW:
        raise InvalidArgumentError(
            f"deployed_at {_utc(deployed_at).isoformat(timespec='seconds')} is in the future "
            f"(now {now.isoformat(timespec='seconds')}); it says when traffic started, and a "
            "datetime without a time zone is read as UTC"
        )
    source = lake.get_branch(branch)
    commit = source.head().id
    if model is not None:
        _check_model(lake, model, commit, source.name)
    record = DeploymentRecord(
        name=name,
        branch=source.name,
        commit=commit,
        model=model,
        user=lake.user,
        deployed_at=_utc(deployed_at) if deployed_at is not None else now,
        status="live",
    )
    try:
        target = lake.branch(f"production/{layout.branch_name(name)}", source=_root(lake))
    except AlreadyExistsError:
        existing = _read_record(lake, name)
        state = f" ({existing.status})" if existing is not None else ""
        raise AlreadyExistsError(
            f"a deployment named {name!r} exists{state}; pick another name"
        ) from None
    try:
        _write_record(target, record)
    except BaseException:
        lake.delete_branch(target.name)  # nothing half-made: no record, no deployment
        raise
    return Deployment(lake, record, flush_interval)


def deployment(lake: Lake, name: str) -> Deployment:
    """The deployment called ``name``; ``production`` always exists and follows ``main``.

    Raises:
        DeploymentNotFoundError: no such deployment.
        InvalidNameError: not a deployment name.
        InvalidArgumentError: ``lake`` is not a Lake.
    """
    require_lake(lake, "tracking.deployment")
    _check_name(name)
    record = _read_record(lake, name)
    if name == layout.PRODUCTION:
        main = lake.resolve("main")
        base = record or DeploymentRecord(
            layout.PRODUCTION, "main", main, None, lake.user, None, "live"
        )
        since = serving_since(lake)
        record = replace(base, commit=main, status="live", ended_at=None, deployed_at=since)
    if record is None:
        raise DeploymentNotFoundError(f"no deployment named {name!r} in this lake")
    return Deployment(lake, record)


def deployments(lake: Lake, include_retired: bool = True) -> list[DeploymentRecord]:
    """Every deployment, production first, then by deploy time (newest first).

    Raises:
        InvalidArgumentError: ``lake`` is not a Lake.
    """
    require_lake(lake, "tracking.deployments")
    out = [deployment(lake, layout.PRODUCTION).record]
    out += [r for r in _branch_records(lake) if include_retired or r.status == "live"]
    epoch = datetime.min.replace(tzinfo=UTC)
    return out[:1] + sorted(out[1:], key=lambda r: r.deployed_at or epoch, reverse=True)


def undeploy(lake: Lake, name: str) -> DeploymentRecord:
    """Retire a live deployment: it takes no more outcomes; its history stays queryable.

    Raises:
        DeploymentNotFoundError: no such deployment.
        DeploymentStateError: it is production, or not live.
        InvalidArgumentError: ``lake`` is not a Lake.
    """
    require_lake(lake, "tracking.undeploy")
    current = deployment(lake, name).record
    if current.is_production:
        raise DeploymentStateError("production cannot be undeployed; it follows main")
    if current.status != "live":
        raise DeploymentStateError(f"deployment {name!r} is already {current.status}")
    return set_status(lake, current, "retired")


def set_status(
    lake: Lake, record: DeploymentRecord, status: str, merge_commit: str | None = None
) -> DeploymentRecord:
    """Record a deployment's end (``promoted`` or ``retired``) and commit it on its branch, only
    if it is still live there (compare-and-swap: a serializable transaction on the record).

    Two processes ending the same deployment the same way (``promoted`` with the same merge
    commit: a promotion both finished) both succeed with the one record.

    Raises:
        DeploymentStateError: another process ended it meanwhile, otherwise; nothing written.
    """
    path = layout.record_file(record.name)

    def change(tx: Branch) -> DeploymentRecord:
        rows = tx.read_table(path).to_pylist() if tx.exists(path) else []
        current = DeploymentRecord.from_row(rows[0]) if rows else record
        if current.status != "live":
            if current.status == status and current.merge_commit == merge_commit:
                return current
            merged = f" (merge {current.merge_commit[:12]})" if current.merge_commit else ""
            raise DeploymentStateError(
                f"deployment {record.name!r} was {current.status}{merged} by another process "
                f"meanwhile; not marked {status}"
                + (f" (main has merge {merge_commit[:12]})" if merge_commit else "")
            )
        updated = replace(
            current, status=status, ended_at=datetime.now(UTC), merge_commit=merge_commit
        )
        _stage_record(tx, updated)
        return updated

    branch = lake.get_branch(f"production/{layout.branch_name(record.name)}")
    return branch.run_transaction(
        change, f"deployment {record.name}: {status}", {"tracking.event": "deployment"}
    )


def serving_since(lake: Lake) -> datetime | None:
    """When production started serving what it serves now: the time of the latest promotion
    (a deployment recorded ``promoted`` with a merge commit), or None when none was ever
    promoted.

    Other merges into ``main`` (data, policy) do not restart production's window: production's
    measurements are of the model it serves, and only a promotion changes that model.
    """
    latest: datetime | None = None
    for record in _branch_records(lake):
        if record.status != "promoted" or record.merge_commit is None:
            continue
        ended = _utc(record.ended_at) if record.ended_at is not None else None
        if ended is not None and (latest is None or ended > latest):
            latest = ended
    return latest


def live_window(record: DeploymentRecord, now: datetime) -> tuple[datetime | None, datetime]:
    """When a deployment was live: from ``deployed_at`` (None: always) to its end or ``now``."""
    return record.deployed_at, record.ended_at or now


# -- helpers -------------------------------------------------------------------------------------


def _branch_records(lake: Lake) -> Iterator[DeploymentRecord]:
    """The record of every deployment on its own branch (all but production), in branch order."""
    for info in lake.branches(all_namespaces=True):
        if info.namespace != "production":
            continue
        name = layout.name_of_branch(info.name)
        if name is None or name == layout.PRODUCTION:
            continue
        record = _read_record(lake, name)
        if record is not None:
            yield record


def _check_name(name: object) -> None:
    if not layout.is_name(name):
        raise InvalidNameError(
            f"invalid deployment name {name!r}: use 1-100 letters, digits, '-' or '_', "
            "starting with a letter or digit, without '__'"
        )


def _check_model(lake: Lake, model: str, commit: str, branch: str) -> None:
    if not isinstance(model, str) or not model.strip("/"):
        raise InvalidArgumentError("the model path must be a non-empty object path")
    if lake.exists(model, commit) or lake.list(commit, prefix=model.rstrip("/") + "/"):
        return
    raise ObjectNotFoundError(
        f"model path {model!r} does not exist on branch {branch!r} at commit {commit[:12]}"
    )


def _root(lake: Lake) -> str:
    """``main``'s first commit: deployment branches start there, so they hold nothing but
    deployment files (run views and listings never see the served data twice)."""
    return lake.log("main")[-1].id


def _read_record(lake: Lake, name: str) -> DeploymentRecord | None:
    try:
        rows = lake.read_table(
            layout.record_file(name), f"production/{layout.branch_name(name)}"
        ).to_pylist()
    except (ObjectNotFoundError, BranchNotFoundError):
        return None
    return DeploymentRecord.from_row(rows[0]) if rows else None


def _write_record(branch: Branch, record: DeploymentRecord) -> None:
    _stage_record(branch, record)
    _commit(branch, f"deployment {record.name}: {record.status}")


def _stage_record(branch: Branch, record: DeploymentRecord) -> None:
    table = pa.Table.from_pylist([record.to_row()], schema=layout.RECORD_SCHEMA)
    branch.write_table(layout.record_file(record.name), table)


def _commit(branch: Branch, message: str) -> None:
    with contextlib.suppress(NothingToCommitError):
        branch.commit(message, {"tracking.event": "deployment"})


def _utc(moment: datetime) -> datetime:
    if not isinstance(moment, datetime):
        raise InvalidArgumentError(f"a time must be a datetime, got {type(moment).__name__}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _seconds(timestamp: int | float | datetime | None, key: str = "") -> float:
    """Unix seconds of a ``log_metric`` timestamp (milliseconds or a datetime; None: now)."""
    if timestamp is None:
        return time.time()
    if isinstance(timestamp, datetime):
        return _utc(timestamp).timestamp()
    return points.check_timestamp_ms(timestamp, key)


def _point(key: Any, value: Any, step: Any, timestamp: Any, segment: Any) -> DeploymentPoint:
    """One outcome checked as run metrics are (:mod:`tracking.points`), and further: a live
    outcome must be finite (a NaN would poison every mean it enters), not stamped in the
    future (beyond :data:`MAX_CLOCK_SKEW`), and its segment, if any, a non-empty string."""
    name = points.check_key(key)
    number = points.check_value(value, name)
    if not math.isfinite(number):
        raise InvalidMetricError(f"metric {name!r}: an outcome must be finite, got {number}")
    checked_step = points.check_step(step, name)
    if segment is not None and (not isinstance(segment, str) or not segment):
        raise InvalidMetricError(
            f"metric {name!r}: segment must be a non-empty string or None, got {segment!r}"
        )
    seconds = _seconds(timestamp, name)
    if seconds > time.time() + MAX_CLOCK_SKEW.total_seconds():
        # A comparison window ends now: such a point would be kept and silently never counted.
        raise InvalidMetricError(
            f"metric {name!r}: timestamp {datetime.fromtimestamp(seconds, UTC).isoformat()} is "
            "in the future (milliseconds since the epoch, or a datetime; naive is UTC)"
        )
    return (name, number, checked_step, seconds, segment)


def _to_table(name: str, points: list[DeploymentPoint]) -> pa.Table:
    keys, values, steps, stamps, segments = (list(c) for c in zip(*points, strict=True))
    return pa.Table.from_arrays(
        [
            pa.repeat(name, len(points)).cast(pa.string()),
            pa.array(keys, pa.string()),
            pa.array(values, pa.float64()),
            pa.array(steps, pa.int64()),
            pa.array([int(s * 1e6) for s in stamps], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            pa.array(segments, pa.string()),
        ],
        schema=layout.METRICS_SCHEMA,
    )
