"""``compare`` and ``promote``: a deployment judged against a baseline, and shipped through a gate.

The data side is here (which points, over which window, aggregated by DuckDB); the maths are
:mod:`tracking.statistics`. Only aggregates leave DuckDB (count, mean, variance per metric,
segment and day), except the raw values of a metric compared on a quantile, which a bootstrap
needs.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import duckdb

from store.errors import InvalidArgumentError, NothingToCommitError, NotInstalledError
from tracking import deployment_layout as layout
from tracking import deployment_registry as deployments_api
from tracking import deployment_views
from tracking.catalog import Source
from tracking.deployment_errors import DeploymentStateError, GateClosedError, NoOverlapError
from tracking.lake_argument import require_lake

if TYPE_CHECKING:
    from store import Lake
    from tracking.deployment_registry import DeploymentRecord
    from tracking.statistics import Estimate, SampleRatio, Summary

DEFAULT_MODE = "sequential"


@dataclass(frozen=True)
class MetricComparison:
    """One metric (overall, or in one segment) compared between candidate and baseline.

    ``difference`` is ``candidate - baseline``; ``low``/``high`` its interval in ``mode``;
    ``relative*`` the same divided by the baseline's value. Values are NaN and ``verdict`` is
    ``not enough data`` when either side has fewer than the minimum number of points.
    """

    metric: str
    segment: str | None
    statistic: str
    direction: str | None
    mode: str
    baseline: float
    candidate: float
    difference: float
    low: float
    high: float
    relative: float
    relative_low: float
    relative_high: float
    p_value: float
    adjusted_p: float
    n_baseline: int
    n_candidate: int
    verdict: str


@dataclass(frozen=True)
class TimelinePoint:
    """The cumulative comparison of one metric's mean at the end of one day (UTC)."""

    metric: str
    day: date
    baseline: float
    candidate: float
    difference: float
    low: float
    high: float
    n_baseline: int
    n_candidate: int


@dataclass(frozen=True)
class Comparison:
    """A candidate deployment against a baseline over the window both were live.

    Attributes:
        candidate, baseline: deployment names.
        candidate_commit, baseline_commit: the commits they serve.
        window_start, window_end: the window compared (start None: since the beginning).
        mode: ``sequential`` (always-valid; safe to look every day) or ``fixed``.
        alpha: the significance level; intervals are at ``1 - alpha``.
        correction: how p-values are adjusted for the number of metrics.
        min_points: fewer points than this on a side gives ``not enough data``.
        metrics: one row per metric, overall.
        segments: one row per metric and segment present on both sides.
        sample_ratio: the traffic check; when it flags a mismatch, do not trust the verdicts.
        timeline: the cumulative difference per day, per metric compared on its mean.
        note: what the baseline stands for when it is not what its name serves now (a promoted
            candidate against ``production``: production before that promotion), else None.
        never_logged: ``(deployment, metric)`` for each compared metric a side never logged at
            all (not just in the window): waiting will not give it data.
    """

    candidate: str
    baseline: str
    candidate_commit: str
    baseline_commit: str
    window_start: datetime | None
    window_end: datetime
    mode: str
    alpha: float
    correction: str
    min_points: int
    metrics: tuple[MetricComparison, ...]
    segments: tuple[MetricComparison, ...]
    sample_ratio: SampleRatio
    timeline: tuple[TimelinePoint, ...]
    note: str | None = None
    never_logged: tuple[tuple[str, str], ...] = ()

    @property
    def regressions(self) -> tuple[MetricComparison, ...]:
        """Every ``worse`` row: per-segment ones first, then overall."""
        return tuple(r for r in (*self.segments, *self.metrics) if r.verdict == "worse")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO strings, NaN as None)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Gate:
    """Whether a comparison lets its candidate be promoted, and why not."""

    open: bool
    reasons: tuple[str, ...]
    comparison: Comparison


@dataclass(frozen=True)
class Promotion:
    """A promoted deployment: its updated record, the merge commit on ``main`` (None when
    ``main`` already had the commit) and the gate it went through."""

    record: DeploymentRecord
    merge_commit: str | None
    gate: Gate


def compare(
    lake: Lake,
    name: str,
    baseline: str = layout.PRODUCTION,
    metrics: Sequence[str] | None = None,
    since: datetime | None = None,
    *,
    mode: str = DEFAULT_MODE,
    alpha: float = 0.05,
    min_points: int | None = None,
    directions: Mapping[str, str] | None = None,
    statistics: Mapping[str, str] | None = None,
    expected_ratio: tuple[float, float] | None = None,
    now: datetime | None = None,
) -> Comparison:
    """Compare deployment ``name`` against ``baseline`` over the window both were live.

    ``production`` means the model production serves now: its window starts at the latest
    promotion into ``main`` (:func:`tracking.deployment_registry.serving_since`), so the
    measurements of a model it served before are never compared. Right after a promotion
    production has no points yet, and every metric is ``not enough data``.

    A candidate that was *promoted* is production's model since its promotion, so against
    ``production`` it is compared with what production served before that promotion: from the
    promotion before it (or the beginning) to its own, the comparison its promotion gate saw
    (``Comparison.note`` says so).

    Args:
        lake: the lake.
        name: the candidate deployment.
        baseline: the deployment to compare against (default ``production``).
        metrics: the metrics to compare (default: every metric either side ever logged).
        since: compare only points from this time on.
        mode: ``sequential`` (always-valid confidence sequences; default, as people look every
            day) or ``fixed`` (Welch's t, valid for one look).
        alpha: significance level; intervals are at ``1 - alpha``.
        min_points: the fewest points a side needs for a verdict (default 30).
        directions: ``{metric: "higher" | "lower"}`` where the name does not say which is
            better (``loss``, ``latency`` ... are known).
        statistics: ``{metric: "median" | "p90" | "p95" | "p99"}`` to compare a quantile (with
            a bootstrap interval, fixed mode) instead of the mean.
        expected_ratio: the traffic split expected (baseline, candidate); default equal.
        now: the end of live windows that have not ended (default: the current time).

    Returns:
        The :class:`Comparison`. p-values are adjusted by Benjamini-Hochberg, overall metrics
        as one family and metric-by-segment rows as another.

    Raises:
        DeploymentNotFoundError: no such deployment.
        NoOverlapError: the two were never live at the same time (or not after ``since``); the
            message names the promotion that restarted production's window when that is why.
        InvalidArgumentError: ``lake`` is not a Lake, a bad mode, alpha, min_points,
            expected_ratio, statistic or direction, a metric in ``metrics`` that neither side
            ever logged, or comparing a deployment with itself.
        NotInstalledError: scipy is missing (install ``flowlake[stats]``).
    """
    require_lake(lake, "tracking.compare")
    st = _statistics()
    if mode not in ("sequential", "fixed"):
        raise InvalidArgumentError(f"mode must be 'sequential' or 'fixed', not {mode!r}")
    if not 0 < alpha < 1:
        raise InvalidArgumentError(f"alpha must be between 0 and 1, got {alpha}")
    if name == baseline:
        raise InvalidArgumentError(f"cannot compare deployment {name!r} with itself")
    minimum = st.DEFAULT_MIN_POINTS if min_points is None else min_points
    if isinstance(minimum, bool) or not isinstance(minimum, numbers.Integral) or minimum < 2:
        raise InvalidArgumentError(
            f"min_points must be a whole number of at least 2 (a variance needs two points), "
            f"got {min_points!r}"
        )
    minimum = int(minimum)
    if expected_ratio is not None:
        _check_ratio(expected_ratio)
    for metric, statistic in (statistics or {}).items():
        if statistic not in st.STATISTICS:
            raise InvalidArgumentError(
                f"unknown statistic {statistic!r} for {metric!r}; use {', '.join(st.STATISTICS)}"
            )
    cand = deployments_api.deployment(lake, name).record
    base = deployments_api.deployment(lake, baseline).record
    note = None
    if base.is_production and cand.status == "promoted" and cand.merge_commit is not None:
        base, note = _production_before(lake, cand)
    start, end = _window(lake, cand, base, since, now or datetime.now(UTC))
    con = duckdb.connect(":memory:")
    try:
        _build(con, lake, [cand.name, base.name])
        where, params = _where(start, end, metrics)
        aggregates = _aggregates(con, where, params)
        # Every metric either side ever logged, in the window or not: one with no points in
        # it (production just promoted) is "not enough data", never silently left out.
        by_side = set(con.execute(
            "SELECT DISTINCT deployment, key FROM deployment_metrics"
        ).fetchall())  # fmt: skip
        logged = sorted({k for (_, k) in by_side})
        if metrics is not None:
            # A misspelt name would otherwise be "not enough data" with 0 points a side, which
            # blames the traffic rather than the name.
            unknown = sorted(set(metrics) - set(logged))
            if unknown:
                raise InvalidArgumentError(
                    f"no metric {', '.join(map(repr, unknown))} was ever logged by {cand.name!r} "
                    f"or {base.name!r}; they logged: {', '.join(logged) or 'nothing yet'}"
                )
        names = sorted(set(metrics)) if metrics is not None else logged
        never = tuple(
            (side, metric)
            for metric in names
            for side in (base.name, cand.name)
            if (side, metric) not in by_side
        )
        overall: list[dict[str, Any]] = []
        segments: list[dict[str, Any]] = []
        for metric in names:
            statistic = (statistics or {}).get(metric, "mean")
            estimate = functools.partial(
                _estimate, st, con, where, params, aggregates, cand.name, base.name, metric
            )
            rest = (statistic, _direction(st, metric, directions), mode, alpha, minimum)
            overall.append(estimate(None, *rest))
            seg_names = sorted({s for (d, k, s) in aggregates if k == metric and s is not None})
            segments.extend(estimate(segment, *rest) for segment in seg_names)
        timeline = _timeline(
            st, con, where, params, cand.name, base.name,
            [m for m in names if (statistics or {}).get(m, "mean") == "mean"],
            mode, alpha, minimum,
        )  # fmt: skip
    finally:
        con.close()
    counts = (
        max((r["n_baseline"] for r in overall), default=0),
        max((r["n_candidate"] for r in overall), default=0),
    )
    return Comparison(
        candidate=cand.name,
        baseline=base.name,
        candidate_commit=cand.commit,
        baseline_commit=base.commit,
        window_start=start,
        window_end=end,
        mode=mode,
        alpha=alpha,
        correction=st.CORRECTION,
        min_points=minimum,
        metrics=tuple(_adjusted(st, overall, alpha)),
        segments=tuple(_adjusted(st, segments, alpha)),
        sample_ratio=st.sample_ratio(counts, expected_ratio),
        timeline=tuple(timeline),
        note=note,
        never_logged=never,
    )


def gate(comparison: Comparison) -> Gate:
    """The promotion gate: open when the traffic split is trusted, every metric has enough
    data, and no metric is worse, overall or in any segment."""
    reasons = []
    if comparison.sample_ratio.mismatch:
        b, c = comparison.sample_ratio.counts
        reasons.append(
            f"sample-ratio mismatch: {b} baseline vs {c} candidate points "
            f"(chi-square p = {comparison.sample_ratio.p_value:.2g})"
        )
    if not comparison.metrics:
        reasons.append("no metrics logged in the window")
    for row in comparison.metrics:
        if row.verdict == "not enough data":
            reasons.append(f"{row.metric}: {shortfall(comparison, row)}")
    for row in comparison.regressions:
        where = f" in segment {row.segment}" if row.segment is not None else ""
        reasons.append(
            f"{row.metric} is worse{where}: {row.candidate:.4g} vs {row.baseline:.4g} "
            f"(adjusted p = {row.adjusted_p:.2g})"
        )
    return Gate(not reasons, tuple(reasons), comparison)


def shortfall(comparison: Comparison, row: MetricComparison) -> str:
    """Why ``row`` has no verdict: which side has too few points, naming the baseline's commit
    and the time it has served since (for production: its latest promotion)."""
    since = (
        comparison.window_start.isoformat(timespec="seconds")
        if comparison.window_start is not None
        else "the beginning"
    )
    short = []
    never = set(comparison.never_logged)
    if (comparison.baseline, row.metric) in never:
        short.append(
            f"{comparison.baseline} never logged {row.metric!r} (there is nothing to compare it "
            "with until it does)"
        )
    elif row.n_baseline < comparison.min_points:
        short.append(
            f"{comparison.baseline} (serving {comparison.baseline_commit[:12]}) has "
            f"{row.n_baseline} points since {since}"
        )
    if (comparison.candidate, row.metric) in never:
        short.append(f"{comparison.candidate} never logged {row.metric!r}")
    elif row.n_candidate < comparison.min_points:
        short.append(f"{comparison.candidate} has {row.n_candidate} points since {since}")
    return (
        "not enough data: "
        + ("; ".join(short) or f"{row.n_baseline} baseline, {row.n_candidate} candidate points")
        + f"; {comparison.min_points} needed on each side"
    )


def check_promotion(
    lake: Lake, name: str, baseline: str = layout.PRODUCTION, **options: Any
) -> Gate:
    """The gate :func:`promote` would apply now (options as :func:`compare`). Raises as
    :func:`compare`."""
    require_lake(lake, "tracking.check_promotion")
    return gate(compare(lake, name, baseline, **options))


def promote(
    lake: Lake,
    name: str,
    *,
    baseline: str = layout.PRODUCTION,
    force: bool = False,
    **options: Any,
) -> Promotion:
    """Merge deployment ``name``'s pinned commit into ``main`` through the gate; production's
    deployment then follows the new ``main``.

    Args:
        lake: the lake.
        name: a live deployment.
        baseline: the deployment the gate compares against.
        force: promote even when the gate is closed (the gate's outcome is still recorded in
            the merge commit's metadata).
        **options: passed to :func:`compare`.

    Raises:
        GateClosedError: the gate is closed and ``force`` is false; ``reasons`` says why.
        DeploymentStateError: another process promoted or retired it meanwhile (two that
            promote it at once: one merge, and both return it).
        ConflictError: the merge conflicts; nothing changed.
        ProtectedBranchError, PermissionDeniedError: the merge was refused; nothing changed.
        DirtyBranchError: ``main`` has uncommitted changes; nothing changed.
        DeploymentStateError: the deployment is production or not live.
        DeploymentNotFoundError: no such deployment.
        InvalidArgumentError: ``lake`` is not a Lake.
    """
    require_lake(lake, "tracking.promote")
    record = deployments_api.deployment(lake, name).record
    if record.is_production:
        raise DeploymentStateError("production is main already; promote a branch deployment")
    if record.status != "live":
        raise DeploymentStateError(f"deployment {name!r} is {record.status}, not live")
    outcome = check_promotion(lake, name, baseline, **options)
    if not outcome.open and not force:
        raise GateClosedError(
            f"promotion gate closed for {name!r}: " + "; ".join(outcome.reasons), outcome.reasons
        )
    metadata = {
        "deployment": name,
        "deployment.branch": record.branch,
        "gate": "open" if outcome.open else "forced",
        "gate.mode": outcome.comparison.mode,
    }
    try:
        merged: str | None = lake.merge(
            record.commit,
            into="main",
            message=f"Promote deployment {name} ({record.branch} @ {record.commit[:12]})",
            metadata=metadata,
        ).id
    except NothingToCommitError:
        # main has the commit already: from a promotion of this deployment by another process
        # (or one interrupted before its record was written), whose merge is then the
        # promotion's; else main had it all along (None), and production's window stays.
        merged = _promotion_merge(lake, name, record.commit)
    updated = deployments_api.set_status(lake, record, "promoted", merged)
    return Promotion(updated, merged, outcome)


#: How far back ``main``'s log is searched for a promotion merge of a deployment still live.
PROMOTION_SEARCH = 500


def _promotion_merge(lake: Lake, name: str, commit: str) -> str | None:
    """The merge commit on ``main`` that promoted deployment ``name`` (pinned at ``commit``),
    among ``main``'s latest commits, or None."""
    for found in lake.log("main", limit=PROMOTION_SEARCH):
        if found.metadata.get("deployment") == name and commit in found.parents[1:]:
            return found.id
    return None


# -- data ----------------------------------------------------------------------------------------


def _statistics() -> Any:
    try:
        from tracking import statistics
    except ImportError as exc:
        raise NotInstalledError(
            f"comparing deployments needs scipy ({exc}); install flowlake[stats]"
        ) from None
    return statistics


def _window(
    lake: Lake,
    cand: DeploymentRecord,
    base: DeploymentRecord,
    since: datetime | None,
    now: datetime,
) -> tuple[datetime | None, datetime]:
    starts = [
        s
        for s in (
            cand.deployed_at,
            base.deployed_at,
            deployments_api._utc(since) if since else None,
        )
        if s is not None
    ]
    start = max(starts) if starts else None
    end = min(cand.ended_at or now, base.ended_at or now)
    if start is not None and end <= start:
        message = (
            f"{cand.name!r} (live {_span(cand, now)}) and {base.name!r} (live {_span(base, now)}) "
            + ("were never live at the same time" if since is None else f"overlap before {since}")
        )
        if since is None and base.is_production and base.deployed_at is not None:
            message += _restarted_by(lake, base.deployed_at)
        raise NoOverlapError(message)
    return start, end


def _production_before(lake: Lake, promoted: DeploymentRecord) -> tuple[DeploymentRecord, str]:
    """Production as it was until ``promoted`` was promoted: from the promotion before it (None:
    the beginning) to that promotion, serving the first parent of its merge commit."""
    until = deployments_api._utc(promoted.ended_at) if promoted.ended_at else None
    earlier = [
        deployments_api._utc(r.ended_at)
        for r in deployments_api.deployments(lake)
        if r.status == "promoted"
        and r.merge_commit is not None
        and r.ended_at is not None
        and until is not None
        and deployments_api._utc(r.ended_at) < until
    ]
    assert promoted.merge_commit is not None  # the caller checked
    parents = lake.commit(promoted.merge_commit).parents
    record = replace(
        deployments_api.deployment(lake, layout.PRODUCTION).record,
        commit=parents[0] if parents else promoted.merge_commit,
        deployed_at=max(earlier) if earlier else None,
        ended_at=until,
    )
    when = until.isoformat(timespec="seconds") if until else "?"
    note = (
        f"{promoted.name!r} was promoted at {when} and is production's model since; "
        f"baseline: what production served before that promotion (the comparison its gate saw)"
    )
    return record, note


def _restarted_by(lake: Lake, restart: datetime) -> str:
    """Why production's window starts where it does: the promotion at ``restart``."""
    restart = deployments_api._utc(restart)
    by = [
        r.name
        for r in deployments_api.deployments(lake)
        if r.status == "promoted" and r.ended_at and deployments_api._utc(r.ended_at) == restart
    ]
    who = f"the promotion of {by[0]!r}" if by else "a promotion"
    return (
        f"; production's window restarts at each promotion, and {who} at "
        f"{restart.isoformat(timespec='seconds')} started it; compare against a deployment "
        f"live at the same time instead (baseline=NAME, flowlake compare --baseline NAME)"
    )


def _span(record: DeploymentRecord, now: datetime) -> str:
    begin = record.deployed_at.isoformat(timespec="seconds") if record.deployed_at else "always"
    finish = record.ended_at.isoformat(timespec="seconds") if record.ended_at else "now"
    return f"{begin} to {finish}"


def _build(con: duckdb.DuckDBPyConnection, lake: Lake, names: list[str]) -> None:
    sources = []
    for name in names:
        branch = f"production/{layout.branch_name(name)}"
        try:
            head = lake.get_branch(branch).head().id
        except Exception:  # production before its first write: no data yet
            continue
        full = layout.branch_name(name)
        sources.append(Source(full, "production", full, head, full))
    found = deployment_views.find(lake, sources, live=True)
    deployment_views.metrics_view(con, lake, [(d.source, p) for d in found for p in d.parts])


def _check_ratio(expected_ratio: object) -> None:
    """``expected_ratio`` is two finite positive shares (baseline, candidate)."""
    shares = list(expected_ratio) if isinstance(expected_ratio, list | tuple) else None
    if (
        shares is None
        or len(shares) != 2
        or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in shares)
        or not all(math.isfinite(s) and s > 0 for s in shares)
    ):
        raise InvalidArgumentError(
            "expected_ratio must be two finite positive shares (baseline, candidate), "
            f"e.g. (1, 1) or (0.9, 0.1); got {expected_ratio!r}"
        )


def _where(
    start: datetime | None, end: datetime, metrics: Sequence[str] | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = ["timestamp <= ?"]
    params: list[Any] = [end]
    if start is not None:
        clauses.append("timestamp >= ?")
        params.append(start)
    if metrics is not None:
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise InvalidArgumentError("metrics must be a list of metric names")
        clauses.append("list_contains(?, key)")
        params.append(list(metrics))
    return " AND ".join(clauses), params


Aggregates = dict[tuple[str, str, "str | None"], "Summary"]


def _aggregates(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> Aggregates:
    from tracking.statistics import Summary

    rows = con.execute(
        "SELECT deployment, key, segment, grouping(segment) AS overall, count(*) AS n, "
        "avg(value) AS mean, coalesce(var_samp(value), 0) AS var FROM deployment_metrics "
        f"WHERE {where} GROUP BY GROUPING SETS ((deployment, key, segment), (deployment, key))",
        params,
    ).fetchall()
    out: Aggregates = {}
    for dep, key, segment, overall, n, mean, var in rows:
        if not overall and segment is None:
            continue  # points logged without a segment count only overall
        out[(dep, key, None if overall else segment)] = Summary(int(n), float(mean), float(var))
    return out


def _estimate(
    st: Any,
    con: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    aggregates: Aggregates,
    cand: str,
    base: str,
    metric: str,
    segment: str | None,
    statistic: str,
    direction: str | None,
    mode: str,
    alpha: float,
    minimum: int,
) -> dict[str, Any]:
    empty = st.Summary(0, math.nan, math.nan)
    b = aggregates.get((base, metric, segment), empty)
    c = aggregates.get((cand, metric, segment), empty)
    estimate: Estimate | None
    if min(b.n, c.n) < max(minimum, 2):
        estimate = None
    elif statistic == "mean":
        estimate = st.estimate_means(b, c, mode, alpha=alpha, min_points=minimum)
    else:
        estimate = st.bootstrap(
            _values(con, where, params, base, metric, segment),
            _values(con, where, params, cand, metric, segment),
            statistic,
            alpha=alpha,
        )
    nan = math.nan
    row: dict[str, Any] = {
        "metric": metric,
        "segment": segment,
        "statistic": statistic,
        "direction": direction,
        "mode": estimate.mode if estimate else ("fixed" if statistic != "mean" else mode),
        "baseline": estimate.baseline if estimate else (b.mean if b.n else nan),
        "candidate": estimate.candidate if estimate else (c.mean if c.n else nan),
        "n_baseline": b.n,
        "n_candidate": c.n,
        "estimate": estimate,
    }
    for field in ("difference", "low", "high", "relative", "relative_low", "relative_high"):
        row[field] = getattr(estimate, field) if estimate else nan
    row["p_value"] = estimate.p_value if estimate else nan
    return row


def _values(
    con: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    dep: str,
    metric: str,
    segment: str | None,
) -> list[float]:
    extra = " AND segment = ?" if segment is not None else ""
    args = [*params, dep, metric] + ([segment] if segment is not None else [])
    rows = con.execute(
        f"SELECT value FROM deployment_metrics WHERE {where} AND deployment = ? AND key = ?"
        + extra,
        args,
    ).fetchall()
    return [r[0] for r in rows]


def _adjusted(st: Any, rows: list[dict[str, Any]], alpha: float) -> list[MetricComparison]:
    adjusted = st.adjust([r["p_value"] for r in rows])
    out = []
    for row, p in zip(rows, adjusted, strict=True):
        estimate = row.pop("estimate")
        verdict = st.verdict(estimate, p, row["direction"], alpha=alpha)
        out.append(MetricComparison(**row, adjusted_p=p, verdict=verdict))
    return out


def _timeline(
    st: Any,
    con: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    cand: str,
    base: str,
    metrics: list[str],
    mode: str,
    alpha: float,
    minimum: int,
) -> list[TimelinePoint]:
    if not metrics:
        return []
    # Per-day count, mean and variance (not sums of squares, which lose every digit of values
    # far from 0), combined day by day.
    rows = con.execute(
        "SELECT deployment, key, CAST(date_trunc('day', timestamp AT TIME ZONE 'UTC') AS DATE) "
        "AS day, count(*), avg(value), coalesce(var_samp(value), 0) FROM deployment_metrics "
        f"WHERE {where} AND list_contains(?, key) AND deployment IN (?, ?) "
        "GROUP BY ALL ORDER BY day",
        [*params, metrics, cand, base],
    ).fetchall()
    days = sorted({r[2] for r in rows})
    daily = {(r[0], r[1], r[2]): st.Summary(int(r[3]), float(r[4]), float(r[5])) for r in rows}
    empty = st.Summary(0, math.nan, math.nan)
    out = []
    for metric in metrics:
        totals = {cand: empty, base: empty}
        for day in days:
            for dep in (cand, base):
                totals[dep] = totals[dep].combine(daily.get((dep, metric, day), empty))
            b, c = totals[base], totals[cand]
            if b.n == 0 and c.n == 0:
                continue
            est = st.estimate_means(b, c, mode, alpha=alpha, min_points=minimum)
            out.append(
                TimelinePoint(
                    metric,
                    day,
                    b.mean,
                    c.mean,
                    c.mean - b.mean,
                    est.low if est else math.nan,
                    est.high if est else math.nan,
                    b.n,
                    c.n,
                )
            )
    return out


def _direction(st: Any, metric: str, directions: Mapping[str, str] | None) -> str | None:
    try:
        return st.direction_of(metric, directions)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
