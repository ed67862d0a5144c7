"""Faults found by using deployments, comparisons and promotion as a platform team would (each
test names the behaviour a user or a CI script relies on)."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import store
import tracking
from store.errors import InvalidArgumentError
from tracking import deployment_registry
from tracking.deployment_errors import DeploymentStateError
from tracking.errors import InvalidMetricError
from ui.cli import app

T0 = datetime.now(UTC) - timedelta(days=3)
APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"


def beside_production(
    lake: store.Lake, name: str = "cand", **deploy: Any
) -> tuple[tracking.Deployment, tracking.Deployment]:
    """Deployment ``name`` of a trained branch of that name, live from ``T0``, and production."""
    branch = lake.branch(name)
    branch.write_bytes("model.bin", b"v2")
    branch.commit("train")
    dep = tracking.deploy(lake, name, branch=branch.name, deployed_at=T0, **deploy)
    return dep, tracking.deployment(lake, "production")


def live_lake(path: Path, candidate: float = 0.9, production: float = 0.9, n: int = 60) -> Path:
    """A lake with deployment ``cand`` live next to production, ``n`` accuracy points a side
    (a share ``candidate`` / ``production`` of them 1.0)."""
    lake = store.open(path)
    dep, prod = beside_production(lake, model="model.bin")
    for i in range(n):
        stamp = T0 + timedelta(minutes=i)
        dep.log_metric("accuracy", float(i < candidate * n), timestamp=stamp)
        prod.log_metric("accuracy", float(i < production * n), timestamp=stamp)
    dep.close()
    prod.close()
    lake.close()
    return path


def test_promote_json_with_a_closed_gate_prints_json_and_exits_1(tmp_path: Path) -> None:
    path = live_lake(tmp_path / "lake", candidate=0.5, production=0.95)
    main = store.open(path).resolve("main")
    result = CliRunner().invoke(
        app, ["promote", "cand", "--yes", "--json", "--lake", str(path)], catch_exceptions=False
    )
    assert result.exit_code == 1
    refused = json.loads(result.stdout)
    assert refused["promoted"] is False and refused["merge_commit"] is None
    assert refused["gate"]["open"] is False
    assert any("accuracy is worse" in reason for reason in refused["gate"]["reasons"])
    assert store.open(path).resolve("main") == main


def test_promote_json_when_promoted_says_so(tmp_path: Path) -> None:
    path = live_lake(tmp_path / "lake")
    result = CliRunner().invoke(app, ["promote", "cand", "--yes", "--json", "--lake", str(path)])
    assert result.exit_code == 0, result.output
    promoted = json.loads(result.stdout)
    assert promoted["promoted"] is True and promoted["gate"]["open"] is True
    assert promoted["merge_commit"] == store.open(path).resolve("main")


def test_compare_names_a_metric_neither_side_logged_instead_of_blaming_traffic(
    tmp_path: Path,
) -> None:
    lake = store.open(live_lake(tmp_path / "lake"))
    with pytest.raises(InvalidArgumentError, match=r"'acuracy'.*they logged: accuracy"):
        tracking.compare(lake, "cand", metrics=["acuracy"])
    with pytest.raises(InvalidArgumentError, match="'acuracy'"):
        tracking.check_promotion(lake, "cand", metrics=["accuracy", "acuracy"])
    assert [r.metric for r in tracking.compare(lake, "cand", metrics=["accuracy"]).metrics] == [
        "accuracy"
    ]


@pytest.mark.parametrize(
    "options",
    [
        {"expected_ratio": (float("nan"), 1.0)},
        {"expected_ratio": (1.0, float("inf"))},
        {"expected_ratio": (0, 1)},
        {"expected_ratio": (1, 2, 3)},
        {"expected_ratio": "1:1"},
        {"min_points": -1},
        {"min_points": 1},
        {"min_points": 2.5},
        {"min_points": True},
    ],
)
def test_compare_refuses_bad_options_by_name(tmp_path: Path, options: dict[str, object]) -> None:
    lake = store.open(live_lake(tmp_path / "lake", n=4))
    with pytest.raises(InvalidArgumentError, match=next(iter(options))):
        tracking.compare(lake, "cand", **options)  # type: ignore[arg-type]


def test_compare_checks_even_traffic_against_an_uneven_expected_split(tmp_path: Path) -> None:
    lake = store.open(live_lake(tmp_path / "lake", n=40))
    result = tracking.compare(lake, "cand", expected_ratio=(3, 1), min_points=2)
    assert result.sample_ratio.expected == (0.75, 0.25) and result.sample_ratio.mismatch is True
    assert tracking.compare(lake, "cand", expected_ratio=(1, 1)).sample_ratio.mismatch is False


def test_a_promotion_interrupted_after_its_merge_is_completed_by_the_next_promote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = store.open(live_lake(tmp_path / "lake"))
    real = deployment_registry.set_status

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies between the merge and the record

    monkeypatch.setattr(deployment_registry, "set_status", crash)
    with pytest.raises(KeyboardInterrupt):
        tracking.promote(lake, "cand")
    merge = lake.resolve("main")
    assert tracking.deployment(lake, "cand").status == "live"
    monkeypatch.setattr(deployment_registry, "set_status", real)
    done = tracking.promote(lake, "cand")
    assert done.merge_commit == merge == done.record.merge_commit
    assert lake.resolve("main") == merge
    assert deployment_registry.serving_since(lake) == done.record.ended_at


def test_a_stale_live_record_cannot_overwrite_another_processes_ending(tmp_path: Path) -> None:
    lake = store.open(live_lake(tmp_path / "lake"))
    stale = tracking.deployment(lake, "cand").record
    tracking.undeploy(lake, "cand")
    with pytest.raises(DeploymentStateError, match="was retired by another process meanwhile"):
        deployment_registry.set_status(lake, stale, "promoted", "f" * 64)
    assert tracking.deployment(lake, "cand").record.merge_commit is None


def test_two_processes_promoting_one_deployment_merge_once_and_record_that_merge(
    tmp_path: Path,
) -> None:
    path = live_lake(tmp_path / "lake")
    start = threading.Barrier(2)
    results: list[object] = []

    def promote() -> None:
        lake = store.open(path)
        start.wait()
        try:
            results.append(tracking.promote(lake, "cand").merge_commit)
        except DeploymentStateError as exc:
            results.append(exc)

    threads = [threading.Thread(target=promote) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    lake = store.open(path)
    merges = [c.id for c in lake.log("main") if c.metadata.get("deployment") == "cand"]
    assert len(merges) == 1
    record = tracking.deployment(lake, "cand").record
    assert record.status == "promoted" and record.merge_commit == merges[0]
    assert len(results) == 2
    assert all(r == merges[0] or isinstance(r, DeploymentStateError) for r in results)


@pytest.mark.parametrize("center", [0.0, 1e3, 1e8, 1.7e9])
def test_combined_summaries_equal_numpy_even_far_from_zero(center: float) -> None:
    from tracking.statistics import Summary

    rng = np.random.default_rng(0)
    days = [center + rng.normal(0, 1, size) for size in (1, 7, 300, 2)]
    total = Summary(0, math.nan, math.nan)
    for values in days:
        total = total.combine(Summary.of(values))
    everything = np.concatenate(days)
    assert total.n == everything.size
    assert total.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert total.variance == pytest.approx(everything.var(ddof=1), rel=1e-6)


def test_timeline_ends_at_the_overall_interval_for_metrics_far_from_zero(tmp_path: Path) -> None:
    lake = store.open(tmp_path / "lake")
    dep, prod = beside_production(lake, model="model.bin")
    rng = np.random.default_rng(1)
    for i in range(120):  # bytes per request, around 1.7 GB, over three days
        stamp = T0 + timedelta(minutes=36 * i)
        prod.log_metric("bytes_read", 1.7e9 + rng.normal(0, 1), timestamp=stamp)
        dep.log_metric("bytes_read", 1.7e9 + 0.5 + rng.normal(0, 1), timestamp=stamp)
    dep.close()
    prod.close()
    for mode in ("fixed", "sequential"):
        result = tracking.compare(lake, "cand", mode=mode)
        overall, last = result.metrics[0], result.timeline[-1]
        assert (last.n_baseline, last.n_candidate) == (120, 120)
        assert last.low == pytest.approx(overall.low, abs=1e-6)
        assert last.high == pytest.approx(overall.high, abs=1e-6)
        assert last.high - last.low > 0.1


def test_dashboard_names_a_baseline_never_live_with_the_candidate_instead_of_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extras import import_extra

    app_test = import_extra("streamlit.testing.v1", "ui").AppTest
    path = live_lake(tmp_path / "lake")
    lake = store.open(path)
    tracking.undeploy(lake, "cand")  # ended before "later" started: they never overlap
    tracking.deploy(lake, "later", branch="cand", model="model.bin")
    lake.close()
    monkeypatch.setenv("FLOWLAKE_LAKE", str(path))
    app = app_test.from_file(str(APP), default_timeout=60).run()
    assert not app.exception
    app.selectbox[0].select("later").run()
    app.selectbox[1].select("cand").run()
    assert not app.exception, app.exception
    assert any("Cannot compare later with cand" in e.value for e in app.error)
    assert any("never live at the same time" in e.value for e in app.error)


def canary_lake(path: Path) -> Path:
    """A 10% canary: production got 9 points for each of the candidate's, same outcomes."""
    lake = store.open(path)
    dep, prod = beside_production(lake, "canary")
    for i in range(400):
        stamp = T0 + timedelta(minutes=i)
        prod.log_metric("accuracy", float(i % 5 != 0), timestamp=stamp)
        if i % 10 == 0:
            dep.log_metric("accuracy", float(i % 20 != 0), timestamp=stamp)
    dep.close()
    prod.close()
    lake.close()
    return path


def test_a_canary_is_promoted_through_the_cli_with_its_declared_traffic_split(
    tmp_path: Path,
) -> None:
    path = canary_lake(tmp_path / "lake")
    cli = CliRunner()
    even = cli.invoke(app, ["promote", "canary", "--yes", "--json", "--lake", str(path)])
    assert even.exit_code == 1
    assert any("sample-ratio mismatch" in r for r in json.loads(even.stdout)["gate"]["reasons"])
    args = ["compare", "canary", "--split", "90:10", "--json", "--lake", str(path)]
    compared = cli.invoke(app, args)
    assert compared.exit_code == 0, compared.output
    ratio = json.loads(compared.stdout)["sample_ratio"]
    assert ratio["expected"] == [0.9, 0.1] and ratio["mismatch"] is False
    split = ["promote", "canary", "--split", "90:10", "--yes", "--json", "--lake", str(path)]
    promoted = cli.invoke(app, split)
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["merge_commit"] == store.open(path).resolve("main")


@pytest.mark.parametrize("split", ["90", "90:10:0", "a:b", "0:1", "-1:2", "nan:1", "inf:1"])
def test_a_bad_split_is_a_usage_error_naming_the_option(tmp_path: Path, split: str) -> None:
    result = CliRunner().invoke(
        app, ["compare", "cand", "--split", split, "--lake", str(tmp_path / "none")]
    )
    assert result.exit_code == 2
    assert "--split" in result.output and "BASELINE:CANDIDATE" in result.output


def test_a_metric_one_side_never_logged_is_named_as_such_not_as_too_few_points(
    tmp_path: Path,
) -> None:
    lake = store.open(tmp_path / "lake")
    dep, prod = beside_production(lake)
    for i in range(40):
        stamp = T0 + timedelta(minutes=i)
        dep.log_metrics({"accuracy": float(i % 5 != 0), "calibration_error": 0.1}, timestamp=stamp)
        prod.log_metrics({"accuracy": float(i % 5 != 0), "old_metric": 1.0}, timestamp=stamp)
    dep.close()
    prod.close()
    result = tracking.compare(lake, "cand")
    assert set(result.never_logged) == {("production", "calibration_error"), ("cand", "old_metric")}
    reasons = tracking.check_promotion(lake, "cand").reasons
    assert any("production never logged 'calibration_error'" in r for r in reasons)
    assert any("cand never logged 'old_metric'" in r for r in reasons)
    assert not any("0 points" in r for r in reasons)
    assert result.to_dict()["never_logged"] == [
        ["production", "calibration_error"],
        ["cand", "old_metric"],
    ]


def test_a_deployment_that_went_live_in_the_future_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    lake = store.open(tmp_path / "lake")
    branch = lake.branch("cand")
    branch.write_bytes("model.bin", b"v2")
    branch.commit("train")
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(InvalidArgumentError, match="deployed_at .* is in the future"):
        tracking.deploy(lake, "cand", branch=branch.name, deployed_at=later)
    assert [r.name for r in tracking.deployments(lake)] == ["production"]
    soon = datetime.now(UTC) + timedelta(seconds=20)  # another machine's clock a little ahead
    assert tracking.deploy(lake, "cand", branch=branch.name, deployed_at=soon).deployed_at == soon


def test_an_outcome_stamped_in_the_future_is_refused_not_silently_left_out(
    tmp_path: Path,
) -> None:
    path = live_lake(tmp_path / "lake", n=2)
    dep = tracking.deployment(store.open(path), "cand")
    later = datetime.now(UTC) + timedelta(days=3000)
    with pytest.raises(InvalidMetricError, match="'accuracy': timestamp .* is in the future"):
        dep.log_metric("accuracy", 1.0, timestamp=later)
    in_ms = (datetime.now(UTC) + timedelta(hours=9)).timestamp() * 1000
    with pytest.raises(InvalidMetricError, match="in the future"):
        dep.log_metrics({"accuracy": 1.0}, timestamp=in_ms)
    dep.log_metric("accuracy", 1.0, timestamp=datetime.now(UTC) + timedelta(seconds=20))
    dep.close()
