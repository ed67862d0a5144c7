"""``production`` in ``compare`` and in the metric gates is the model production serves now,
measured only since its promotion; too few points since then fails the gate closed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import store
import tracking
from store.policy import api
from store.policy.enforce import META_PRINCIPAL
from store.policy.gates import GateOutcome, evaluate
from store.policy.model import POLICY_PATH
from store.policy.parse import parse_policy

T0 = datetime(2026, 11, 1, tzinfo=UTC)

PERIMETERS = """\
version = 1

[perimeters.production]
principals = ["*"]
write = ["**"]

[perimeters.staging]
principals = ["*"]
write = ["**"]
"""
POLICY = (
    PERIMETERS
    + """
[[gates]]
metric = "accuracy >= production.accuracy - 0.002"
"""
)


def trained(lake: store.Lake, name: str) -> tracking.Deployment:
    branch = lake.branch(name)
    branch.write_bytes("models/clf/model.pkl", name.encode())
    branch.commit(f"train {name}")
    return tracking.deploy(lake, name, branch=name, deployed_at=T0)


def log(dep: tracking.Deployment, values: np.ndarray, start: datetime | None) -> None:
    """Outcomes one minute apart from ``start``, or stamped now when ``start`` is None."""
    for i, value in enumerate(values):
        stamp = start + timedelta(minutes=i) if start is not None else None
        dep.log_metric("accuracy", float(value), step=i, timestamp=stamp)
    dep.close()


def relative_gate(lake: store.Lake, branch: str) -> GateOutcome:
    view = api._view(lake)
    commit = lake.resolve(branch)
    (outcome,) = evaluate(parse_policy(POLICY), view._inner, view.ledger, commit, view.identity)
    return outcome


def test_after_a_promotion_gates_and_compare_hold_candidates_to_the_new_production(
    lake: store.Lake,
) -> None:
    rng = np.random.default_rng(11)
    a, b, c = trained(lake, "a"), trained(lake, "b"), trained(lake, "c")
    log(tracking.deployment(lake, "production"), rng.normal(0.6, 0.01, 60), T0)
    log(a, rng.normal(0.95, 0.01, 60), T0)
    log(b, rng.normal(0.85, 0.01, 60), T0)
    # Before the promotion B beats the old production: the relative gate holds.
    assert relative_gate(lake, "user:tester/b").passed
    promotion = tracking.promote(lake, "a")
    production = tracking.deployment(lake, "production")
    assert production.commit == promotion.merge_commit
    promoted_at = tracking.deployment(lake, "a").record.ended_at
    assert production.deployed_at == promoted_at

    # Just promoted: nothing measured on A as production yet; closed, never the old numbers.
    closed = relative_gate(lake, "user:tester/b")
    assert not closed.passed
    assert "not enough data" in closed.detail and "production (serving" in closed.detail
    assert "has 0 points since" in closed.detail and "0.6" not in closed.detail
    just_now = tracking.compare(lake, "b")
    assert just_now.window_start == promoted_at
    assert just_now.metrics[0].verdict == "not enough data"
    assert any("production (serving" in r for r in tracking.check_promotion(lake, "b").reasons)

    # Traffic after the promotion: production now scores like A; B is held to that.
    reopened = tracking.deployment(lake, "b")
    log(tracking.deployment(lake, "production"), rng.normal(0.95, 0.01, 40), None)
    log(reopened, rng.normal(0.85, 0.01, 40), None)
    log(c, rng.normal(0.97, 0.01, 40), None)
    refused = relative_gate(lake, "user:tester/b")
    assert not refused.passed and "= production 0.9" in refused.detail, refused.detail
    comparison = tracking.compare(lake, "b")
    row = comparison.metrics[0]
    assert row.n_baseline == 40 and row.baseline == pytest.approx(0.95, abs=0.01)
    assert comparison.baseline_commit == promotion.merge_commit
    assert relative_gate(lake, "user:tester/c").passed  # better than A: still promotable


def test_a_merge_made_with_a_token_is_committed_by_the_token_not_the_login(
    lake: store.Lake, lake_access: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = lake.branch("setup")
    setup.write_bytes(POLICY_PATH, PERIMETERS.encode())
    setup.commit("policy")
    lake.merge(setup.name, into="main")
    location = lake_access.location  # type: ignore[attr-defined]
    with store.open(location, perimeter="production") as prod:
        secret, _ = api.create_token(prod, "ci", "production", "1d")
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    with store.open(location, user="avery") as ci:
        change = ci.branch("change")
        change.write_bytes("models/clf/model.pkl", b"v2")
        on_branch = change.commit("train")
        merged = ci.merge(change.name, into="main", message="Promote")
        for made in (on_branch, ci.commit(merged.id)):
            assert made.committer == "token:ci"
            assert made.metadata[META_PRINCIPAL] == "token:ci"
        assert secret not in repr(ci.commit(merged.id))
