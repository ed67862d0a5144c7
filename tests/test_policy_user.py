"""Faults found by using perimeters, tokens, gates and the audit log as a platform team would
(each test names the behaviour a user relies on)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from test_policy_cli import create_token, flowlake, lake_with_policy
from test_policy_enforce import policed, reopen

import store
import tracking
from store.errors import InvalidArgumentError, PolicyError, TokenError
from store.policy import api
from store.policy.gates import evaluate
from store.policy.parse import parse_policy

__all__ = ["policed"]  # the fixture, shared with test_policy_enforce


def test_revoking_a_revoked_token_changes_nothing_and_says_when(policed: object) -> None:
    prod = reopen(policed, perimeter="production")
    api.create_token(prod, "ci", "production", "30d")
    first = api.revoke_token(prod, "ci")
    entries = len(api.audit_log(prod))
    admin_head = api._view(prod).ledger._head()
    again = api.revoke_token(prod, "ci")
    assert again.revoked == first.revoked
    assert len(api.audit_log(prod)) == entries
    assert api._view(prod).ledger._head() == admin_head
    prod.close()


def test_cli_revoking_twice_exits_0_and_names_the_first_revocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = lake_with_policy(tmp_path / "lake")
    create_token(lake, monkeypatch)
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    assert flowlake(lake, "token", "revoke", "ci")[0] == 0
    code, out = flowlake(lake, "token", "revoke", "ci")
    assert code == 0, out
    assert "already revoked on" in out and "uncommitted" not in out


STRICT_BASE = """\
version = 1

[groups]
release = ["user:avery"]

[perimeters.production]
principals = ["group:release"]

[perimeters.staging]
principals = ["*"]
"""


@pytest.mark.parametrize(
    ("mistake", "line", "message"),
    [
        ("[[gates]]\napprovals = 1\napprovers = []\n", 14, "'approvers' is empty"),
        (
            '[[gates]]\napprovals = 1\napprovers = ["group:relase"]\n',
            14,
            r"'group:relase' is not a group defined under \[groups\] \(defined: release\)",
        ),
        ('[[gates]]\nmetric = "production.accuracy >= 0.9"\n', 13, "the left side is the"),
    ],
)
def test_policy_mistakes_that_could_only_fail_closed_are_named_with_their_line(
    mistake: str, line: int, message: str
) -> None:
    text = STRICT_BASE + "\n" + mistake
    with pytest.raises(PolicyError, match=message) as refused:
        parse_policy(text)
    assert refused.value.line == line
    parse_policy(text, strict=False)  # a policy already on main still opens


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('principals = ["*"]', 'principals = ["group:releese"]', "'group:releese' is not a group"),
        ('release = ["user:avery"]', 'release = ["group:ops"]', "groups cannot contain groups"),
    ],
)
def test_unknown_or_nested_groups_in_a_policy_are_refused(old: str, new: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(STRICT_BASE.replace(old, new))


def test_merging_a_policy_with_an_empty_approvers_list_is_refused_and_changes_nothing(
    policed: object,
) -> None:
    prod = reopen(policed, perimeter="production")
    main = prod.resolve("main")
    text = prod.read_bytes("_flowlake/policy.toml", "main").decode()
    change = prod.branch("tighten")
    change.write_bytes(
        "_flowlake/policy.toml", (text + "\n[[gates]]\napprovals = 1\napprovers = []\n").encode()
    )
    change.commit("require approvals")
    with pytest.raises(PolicyError, match="'approvers' is empty"):
        prod.merge(change.name, into="main")
    assert prod.resolve("main") == main
    prod.close()


def test_a_revoked_token_name_can_be_reused_to_rotate_and_the_old_secret_stays_refused(
    policed: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    prod = reopen(policed, perimeter="production")
    old, _ = api.create_token(prod, "ci", "production", "30d")
    with pytest.raises(InvalidArgumentError, match="exists already: revoke it first"):
        api.create_token(prod, "ci", "production", "30d")
    api.revoke_token(prod, "ci")
    new, record = api.create_token(prod, "ci", "production", "30d")
    assert record.revoked is None and new != old
    assert [(t.name, t.revoked) for t in api.list_tokens(prod)] == [("ci", None)]
    monkeypatch.setenv("FLOWLAKE_TOKEN", new)
    assert api.identity(reopen(policed)).principal == "token:ci"
    monkeypatch.setenv("FLOWLAKE_TOKEN", old)
    with pytest.raises(TokenError):
        reopen(policed)
    monkeypatch.delenv("FLOWLAKE_TOKEN")
    actions = [e.action for e in api.audit_log(prod) if e.details.get("token") == "ci"]
    assert actions[:1] == ["token-create"] and "token-revoke" in actions
    assert actions.count("token-create") == 2
    prod.close()


@pytest.mark.parametrize(
    ("condition", "verdict"),
    [("nps >= production.nps", "better"), ("nps <= production.nps + 20", "worse")],
)
def test_a_metric_gate_asking_better_takes_its_direction_from_the_condition(
    embedded_lake: store.Lake, condition: str, verdict: str
) -> None:
    rng = np.random.default_rng(3)
    branch = embedded_lake.branch("survey")
    branch.write_bytes("model.bin", b"v2")
    branch.commit("train")
    start = datetime.now(UTC) - timedelta(days=2)
    dep = tracking.deploy(embedded_lake, "survey", branch=branch.name, deployed_at=start)
    prod = tracking.deployment(embedded_lake, "production")
    for i, (c, b) in enumerate(zip(rng.normal(40, 5, 80), rng.normal(30, 5, 80), strict=True)):
        stamp = start + timedelta(minutes=i)
        dep.log_metric("nps", float(c), timestamp=stamp)  # a name that says no direction
        prod.log_metric("nps", float(b), timestamp=stamp)
    dep.close()
    prod.close()
    text = STRICT_BASE + f'\n[[gates]]\nmetric = "{condition}"\nrequire = "better"\n'
    view = api._view(embedded_lake)
    (outcome,) = evaluate(parse_policy(text), view._inner, view.ledger, dep.commit, view.identity)
    assert outcome.passed is (verdict == "better"), outcome.detail
    assert f"verdict {verdict!r}" in outcome.detail  # not 'changed': the name says neither way
