"""Deployments next to production: records, live outcomes, compare, promote, undeploy.

Every behaviour runs on every backend through the ``lake`` fixture.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from extras import import_extra

import store
import tracking
from store.errors import (
    AlreadyExistsError,
    BranchNotFoundError,
    ConflictError,
    CorruptObjectError,
    InvalidArgumentError,
    InvalidNameError,
    ObjectNotFoundError,
)

stats = import_extra("scipy.stats", "stats")

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def candidate_branch(lake: store.Lake, name: str = "lr", content: bytes = b"model v2") -> str:
    branch = lake.branch(name)
    branch.write_bytes("models/clf/model.pkl", content)
    branch.commit("train model")
    return branch.name


def log_stream(
    dep: tracking.Deployment,
    values: np.ndarray,
    key: str = "accuracy",
    segments: tuple[str, ...] = ("mobile", "web"),
    days: int = 4,
) -> None:
    """Spread ``values`` evenly over ``days`` days from T0, alternating segments."""
    per_day = math.ceil(len(values) / days)
    for i, value in enumerate(values):
        stamp = T0 + timedelta(days=i // per_day, minutes=i % per_day)
        dep.log_metric(key, float(value), step=i, timestamp=stamp, segment=segments[i % 2])
    dep.close()


def test_deploy_pins_the_branch_head_and_records_who_and_what(lake: store.Lake) -> None:
    name = candidate_branch(lake)
    pinned = lake.resolve(name)
    dep = tracking.deploy(lake, "cand", branch="lr", model="models/clf", deployed_at=T0)
    branch = lake.get_branch(name)
    branch.write_bytes("models/clf/model.pkl", b"model v3")
    branch.commit("retrain")
    again = tracking.deployment(lake, "cand")
    assert again.commit == dep.commit == pinned != lake.resolve(name)
    assert (again.branch, again.model, again.user, again.status) == (
        name,
        "models/clf",
        "tester",
        "live",
    )
    assert again.deployed_at == T0
    assert [d.name for d in tracking.deployments(lake)] == ["production", "cand"]


def test_production_exists_in_every_lake_and_follows_main(lake: store.Lake) -> None:
    prod = tracking.deployment(lake, "production")
    assert (prod.branch, prod.status, prod.commit) == ("main", "live", lake.resolve("main"))
    name = candidate_branch(lake)
    lake.merge(name, into="main")
    assert tracking.deployment(lake, "production").commit == lake.resolve("main")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"branch": "nope"}, BranchNotFoundError, "nope"),
        ({"branch": "lr", "model": "models/missing"}, ObjectNotFoundError, "models/missing"),
        ({"branch": ""}, InvalidArgumentError, "branch"),
    ],
)
def test_bad_deploy_is_refused_and_leaves_nothing(
    lake: store.Lake, kwargs: dict[str, str], error: type[Exception], message: str
) -> None:
    candidate_branch(lake)
    before = {b.name for b in lake.branches(all_namespaces=True)}
    with pytest.raises(error, match=message):
        tracking.deploy(lake, "cand", **kwargs)
    assert {b.name for b in lake.branches(all_namespaces=True)} == before
    assert [d.name for d in tracking.deployments(lake)] == ["production"]


@pytest.mark.parametrize("name", ["production", "bad name", "a__b", ""])
def test_bad_deployment_names_are_refused(embedded_lake: store.Lake, name: str) -> None:
    # validated before any backend call, so one backend is enough
    lake = embedded_lake
    candidate_branch(lake)
    with pytest.raises(InvalidNameError):
        tracking.deploy(lake, name, branch="lr")


def test_duplicate_deployment_name_is_refused(lake: store.Lake) -> None:
    candidate_branch(lake)
    tracking.deploy(lake, "cand", branch="lr")
    tracking.undeploy(lake, "cand")
    with pytest.raises(AlreadyExistsError, match="'cand' exists \\(retired\\)"):
        tracking.deploy(lake, "cand", branch="lr")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("accuracy", math.nan), {}, "finite"),
        (("accuracy", math.inf), {}, "finite"),
        (("accuracy", "0.9"), {}, "not a real number"),
        (("accuracy", None), {}, "not a real number"),
        (("", 1.0), {}, "non-empty string"),
        (("accuracy", 1.0), {"step": 1.5}, "step"),
        (("accuracy", 1.0), {"step": 2**64}, "step"),
        (("accuracy", 1.0), {"timestamp": "yesterday"}, "timestamp"),
        (("accuracy", 1.0), {"timestamp": math.nan}, "timestamp"),
        (("accuracy", 1.0), {"timestamp": 1_700_000_000}, "looks like seconds"),
        (("accuracy", 1.0), {"segment": 3}, "segment"),
    ],
)
def test_bad_metric_points_are_refused_and_never_written(
    embedded_lake: store.Lake, args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    # points are checked in memory, before any backend call, so one backend is enough
    lake = embedded_lake
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr")
    with pytest.raises(tracking.InvalidMetricError, match=message):
        dep.log_metric(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=message):
        dep.log_metrics({"ok": 1.0, args[0]: args[1]}, **kwargs)  # type: ignore[dict-item,arg-type]
    dep.close()
    assert lake.list("production/deploy-cand", prefix="_flowlake/deployments/cand/metrics/") == []


def test_compare_gives_welch_numbers_verdicts_and_segments(lake: store.Lake) -> None:
    candidate_branch(lake)
    rng = np.random.default_rng(4)
    base = rng.normal(0.80, 0.05, 120)
    cand = rng.normal(0.86, 0.05, 120)
    cand[0::2] = rng.normal(0.70, 0.05, 60)  # the candidate regresses on mobile
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    log_stream(tracking.deployment(lake, "production"), base)
    log_stream(dep, cand)
    result = tracking.compare(lake, "cand", mode="fixed", now=T0 + timedelta(days=10))
    (overall,) = result.metrics
    ref = stats.ttest_ind(cand, base, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (overall.low, overall.high) == pytest.approx((ci.low, ci.high))
    assert overall.p_value == pytest.approx(ref.pvalue)
    assert (overall.n_baseline, overall.n_candidate) == (120, 120)
    assert overall.direction == "higher"
    by_segment = {r.segment: r for r in result.segments}
    assert by_segment["mobile"].verdict == "worse" and by_segment["web"].verdict == "better"
    assert result.regressions[0].segment == "mobile"
    assert result.correction == "benjamini-hochberg"
    assert not result.sample_ratio.mismatch
    days = [p for p in result.timeline if p.metric == "accuracy"]
    assert len(days) == 4 and days[-1].difference == pytest.approx(cand.mean() - base.mean())


def test_too_few_points_give_not_enough_data(lake: store.Lake) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    log_stream(tracking.deployment(lake, "production"), np.zeros(10))
    log_stream(dep, np.ones(10))
    result = tracking.compare(lake, "cand", now=T0 + timedelta(days=5))
    assert result.metrics[0].verdict == "not enough data"
    assert not tracking.check_promotion(lake, "cand", now=T0 + timedelta(days=5)).open


def test_sample_ratio_mismatch_is_flagged_and_closes_the_gate(lake: store.Lake) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    rng = np.random.default_rng(1)
    log_stream(tracking.deployment(lake, "production"), rng.normal(1, 0.1, 400))
    log_stream(dep, rng.normal(1, 0.1, 250))
    gate = tracking.check_promotion(lake, "cand", now=T0 + timedelta(days=5))
    assert gate.comparison.sample_ratio.mismatch
    assert not gate.open and "sample-ratio mismatch" in gate.reasons[0]


def test_compare_without_overlapping_window_is_an_error(lake: store.Lake) -> None:
    candidate_branch(lake)
    tracking.deploy(lake, "old", branch="lr", deployed_at=T0)
    tracking.undeploy(lake, "old")
    tracking.deploy(lake, "new", branch="lr")  # live from now: after "old" was retired
    with pytest.raises(tracking.NoOverlapError, match="never live at the same time"):
        tracking.compare(lake, "new", baseline="old")


def test_deployment_views_span_namespaces(lake: store.Lake) -> None:
    candidate_branch(lake)
    other = lake.with_namespace("user:blake")
    other.branch("mine").write_bytes("x", b"1")
    other.get_branch("mine").commit("x")
    tracking.deploy(lake, "a", branch="lr").close()
    dep_b = tracking.deploy(other, "b", branch="user:blake/mine")
    dep_b.log_metric("accuracy", 1.0, segment="eu")
    dep_b.close()
    rows = tracking.sql(
        lake, "SELECT deployment, deployed_branch, status FROM deployments ORDER BY deployment"
    ).to_pylist()
    assert [(r["deployment"], r["deployed_branch"]) for r in rows] == [
        ("a", "user:tester/lr"),
        ("b", "user:blake/mine"),
        ("production", "main"),
    ]
    points = tracking.sql(lake, "SELECT deployment, key, value, segment FROM deployment_metrics")
    assert points.to_pylist() == [
        {"deployment": "b", "key": "accuracy", "value": 1.0, "segment": "eu"}
    ]


def test_promote_merges_the_pinned_commit_and_production_follows(lake: store.Lake) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    rng = np.random.default_rng(2)
    log_stream(tracking.deployment(lake, "production"), rng.normal(0.8, 0.05, 200))
    log_stream(dep, rng.normal(0.9, 0.05, 200))
    promotion = tracking.promote(lake, "cand", now=T0 + timedelta(days=5))
    assert promotion.gate.open and promotion.merge_commit == lake.resolve("main")
    assert lake.read_bytes("models/clf/model.pkl", "main") == b"model v2"
    assert tracking.deployment(lake, "cand").status == "promoted"
    assert tracking.deployment(lake, "production").commit == promotion.merge_commit


def test_compare_of_a_promoted_candidate_is_against_production_before_its_promotion(
    lake: store.Lake,
) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    rng = np.random.default_rng(2)
    prod = tracking.deployment(lake, "production")
    log_stream(prod, rng.normal(0.8, 0.05, 200))
    log_stream(dep, rng.normal(0.9, 0.05, 200))
    before = lake.resolve("main")
    promotion = tracking.promote(lake, "cand", now=T0 + timedelta(days=5))
    # production's points after the promotion are of the promoted model: never the baseline
    after = tracking.deployment(lake, "production")
    after.log_metric("accuracy", 0.0, timestamp=datetime.now(UTC))  # after the promotion
    after.close()
    result = tracking.compare(lake, "cand")
    assert result.baseline == "production" and result.baseline_commit == before
    assert result.note is not None and "'cand' was promoted at" in result.note
    assert result.window_end == tracking.deployment(lake, "cand").record.ended_at
    seen = {r.metric: (r.n_baseline, r.baseline) for r in promotion.gate.comparison.metrics}
    assert {r.metric: (r.n_baseline, r.baseline) for r in result.metrics} == seen


def test_compare_with_production_restarted_by_a_promotion_names_the_promotion(
    lake: store.Lake,
) -> None:
    candidate_branch(lake)
    tracking.deploy(lake, "old", branch="lr", deployed_at=T0)
    tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    tracking.undeploy(lake, "old")
    tracking.promote(lake, "cand", force=True)
    with pytest.raises(tracking.NoOverlapError, match="the promotion of 'cand' at") as info:
        tracking.compare(lake, "old")
    assert "--baseline NAME" in str(info.value)


def test_promote_refuses_a_closed_gate_and_changes_nothing(lake: store.Lake) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    rng = np.random.default_rng(3)
    log_stream(tracking.deployment(lake, "production"), rng.normal(0.9, 0.05, 200))
    log_stream(dep, rng.normal(0.8, 0.05, 200))
    main = lake.resolve("main")
    with pytest.raises(tracking.GateClosedError, match="accuracy is worse") as info:
        tracking.promote(lake, "cand", now=T0 + timedelta(days=5))
    assert info.value.reasons
    assert lake.resolve("main") == main
    assert tracking.deployment(lake, "cand").status == "live"


def test_promote_reports_a_conflict_and_changes_nothing(lake: store.Lake) -> None:
    candidate_branch(lake, content=b"candidate")
    rival = candidate_branch(lake, "rival", content=b"rival")
    lake.merge(rival, into="main")
    main = lake.resolve("main")
    dep = tracking.deploy(lake, "cand", branch="lr", deployed_at=T0)
    rng = np.random.default_rng(5)
    log_stream(tracking.deployment(lake, "production"), rng.normal(0.8, 0.05, 200))
    log_stream(dep, rng.normal(0.9, 0.05, 200))
    with pytest.raises(ConflictError, match="models/clf/model.pkl"):
        tracking.promote(lake, "cand", now=T0 + timedelta(days=5))
    assert lake.resolve("main") == main
    assert tracking.deployment(lake, "cand").status == "live"


def test_undeploy_retires_and_refuses_more_outcomes(lake: store.Lake) -> None:
    candidate_branch(lake)
    dep = tracking.deploy(lake, "cand", branch="lr")
    record = tracking.undeploy(lake, "cand")
    assert record.status == "retired" and record.ended_at is not None
    with pytest.raises(tracking.DeploymentStateError):
        tracking.deployment(lake, "cand").log_metric("accuracy", 1.0)
    with pytest.raises(tracking.DeploymentStateError):
        tracking.undeploy(lake, "production")
    with pytest.raises(tracking.DeploymentNotFoundError):
        tracking.undeploy(lake, "ghost")
    assert dep.name == "cand"


def test_a_damaged_deployment_metric_part_is_an_error_never_wrong_numbers(
    embedded_lake: store.Lake,
) -> None:
    candidate_branch(embedded_lake)
    # Enough points for a part over the embedded store's inline limit: a file to damage.
    values = np.random.default_rng(0).uniform(0.4, 0.6, 3000)
    log_stream(tracking.deploy(embedded_lake, "cand", branch="lr", deployed_at=T0), values)
    ref = "production/deploy-cand"
    parts = [
        info.path
        for info in embedded_lake.list(ref, prefix="_flowlake/deployments/")
        if "/metrics/" in info.path and info.path.endswith(".parquet")
    ]
    local = Path(embedded_lake.locate(parts[0], ref=ref) or "")
    data = bytearray(local.read_bytes())
    data[len(data) // 2] ^= 0x01
    local.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError):
        tracking.sql(embedded_lake, "SELECT sum(value) FROM deployment_metrics")
