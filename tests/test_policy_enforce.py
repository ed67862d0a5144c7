"""The policy enforced on every backend: perimeters, rights, tokens, the audit chain, gates.

Every behaviour runs on every backend through the ``lake`` fixture; lakes are reopened through
``lake_access`` (configuration only) in a perimeter or with a token, as CI would.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import store
import tracking
from store.errors import (
    GateFailedError,
    InvalidArgumentError,
    PermissionDeniedError,
    PolicyError,
    TokenError,
)
from store.policy import api
from store.policy.enforce import META_AUDIT_SEQ, META_PERIMETER, META_PRINCIPAL, backend_principal
from store.policy.gates import evaluate
from store.policy.ledger import ADMIN_BRANCH, audit_path
from store.policy.model import POLICY_PATH
from store.policy.parse import parse_policy

T0 = datetime(2026, 11, 1, tzinfo=UTC)

POLICY = """\
version = 1

[groups]
release = ["{admin}", "token:ci"]

[perimeters.production]
principals = ["group:release"]
write = ["production/**", "user:*/**"]

[perimeters.staging]
principals = ["*"]
write = ["user:*/**", "team:*/**"]
read_deny = ["data/pii/**"]
{gates}
"""

METRIC_GATE = """
[[gates]]
metric = "accuracy >= production.accuracy - 0.002"
"""


def admin(lake: store.Lake) -> str:
    return backend_principal(api._view(lake)._inner, lake.user)


def install_policy(lake: store.Lake, gates: str = "") -> str:
    """Merge a policy (and some data) into main of a lake that has none yet; returns it."""
    text = POLICY.format(admin=admin(lake), gates=gates)
    setup = lake.branch("setup")
    setup.write_bytes("data/pii/people.csv", b"name\nada\n")
    setup.write_bytes("data/open.csv", b"x\n1\n")
    setup.write_bytes("_flowlake/policy.toml", text.encode())
    setup.commit("policy and data")
    lake.merge(setup.name, into="main")
    return text


def reopen(access: object, **kwargs: str) -> store.Lake:
    return store.open(access.location, **kwargs)  # type: ignore[attr-defined]


@pytest.fixture
def policed(lake: store.Lake, lake_access: object) -> object:
    install_policy(lake)
    return lake_access


def test_a_lake_without_policy_records_nothing_and_checks_nothing(lake: store.Lake) -> None:
    branch = lake.branch("exp")
    branch.write_bytes("a", b"1")
    commit = branch.commit("one")
    assert META_PERIMETER not in commit.metadata
    lake.merge("exp", into="main")
    assert ADMIN_BRANCH not in {b.name for b in lake.branches(all_namespaces=True)}


def test_a_perimeter_asked_of_a_lake_without_policy_is_refused_but_the_ambient_one_is_not(
    lake: store.Lake, lake_access: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        InvalidArgumentError, match="perimeter 'nonsense' does not exist.*no policy"
    ):
        reopen(lake_access, perimeter="nonsense")
    # $FLOWLAKE_PERIMETER is set for a team's policed lakes; a lake without one ignores it.
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    assert reopen(lake_access).resolve("main") == lake.resolve("main")


def test_staging_cannot_write_production_merge_into_main_or_read_pii(policed: object) -> None:
    staging = reopen(policed, perimeter="staging")
    main = staging.resolve("main")
    exp = staging.branch("exp")
    exp.write_bytes("model.bin", b"m")
    commit = exp.commit("train")
    assert commit.metadata[META_PERIMETER] == "staging"
    assert commit.metadata[META_PRINCIPAL] == api.identity(staging).principal
    exp.write_bytes("model.bin", b"m2")
    with pytest.raises(InvalidArgumentError, match="kept for the policy layer"):
        exp.commit("claim to be CI", metadata={META_PRINCIPAL: "token:ci"})
    exp.reset()
    # The line named is the one of staging's `write` key (POLICY's line 12).
    with pytest.raises(
        PermissionDeniedError, match=r"may not merge into production/main \(policy line 12: write"
    ):
        staging.merge("exp", into="main")
    with pytest.raises(PermissionDeniedError, match="may not revert on production/main"):
        staging.revert("main", "main")
    with pytest.raises(PermissionError, match="may not create branch production/hotfix"):
        staging.with_namespace("production").branch("hotfix")
    with pytest.raises(PermissionError, match="data/pii/people.csv"):
        staging.read_bytes("data/pii/people.csv", "main")
    assert [o.path for o in staging.list("main", "data")] == ["data/open.csv"]
    assert staging.read_bytes("data/open.csv", "main") == b"x\n1\n"
    assert staging.resolve("main") == main
    staging.close()


def test_staging_cannot_change_the_policy_and_an_invalid_policy_never_lands(
    policed: object,
) -> None:
    staging = reopen(policed, perimeter="staging")
    edit = staging.branch("weaken")
    edit.write_bytes("_flowlake/policy.toml", b"version = 1\n")
    edit.commit("weaken the policy")
    main = staging.resolve("main")
    with pytest.raises(PermissionDeniedError):
        staging.merge("weaken", into="main")
    staging.close()
    prod = reopen(policed, perimeter="production")
    with pytest.raises(PolicyError, match=r"\[perimeters.<name>\] table is required"):
        prod.merge("user:tester/weaken", into="main")
    assert prod.resolve("main") == main
    prod.close()


def test_unknown_perimeter_and_outsiders_are_refused(policed: object, monkeypatch) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown perimeter 'prod'.*production"):
        reopen(policed, perimeter="prod")
    monkeypatch.setenv("FLOWLAKE_TOKEN", "")
    monkeypatch.setenv("FLOWLAKE_USER", "mallory")
    if api.identity(reopen(policed)).principal == "user:mallory":  # embedded: the login counts
        with pytest.raises(PermissionDeniedError, match="user:mallory may not act in"):
            reopen(policed, perimeter="production")


def test_tokens_authenticate_expire_revoke_and_never_leak(
    policed: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    prod = reopen(policed, perimeter="production")
    secret, record = api.create_token(prod, "ci", "production", "30d")
    assert secret.startswith("flk_") and record.digest != secret
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    ci = reopen(policed)
    assert api.identity(ci) == api.Identity("token:ci", "production")
    with pytest.raises(PermissionDeniedError, match="only a person creates tokens"):
        api.create_token(ci, "ci2", "production")
    branch = ci.branch("release")
    branch.write_bytes("m", b"1")
    commit = branch.commit("release")
    ci.merge(branch.name, into="main")
    with pytest.raises(TokenError, match="'ci' is for perimeter 'production'") as wrong:
        reopen(policed, perimeter="staging")
    assert secret not in str(wrong.value)
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(TokenError, match="malformed"):
        reopen(policed)
    monkeypatch.delenv("FLOWLAKE_TOKEN")
    listed = api.list_tokens(prod)
    assert [(t.name, t.perimeter) for t in listed] == [("ci", "production")]
    assert listed[0].last_used is not None
    view = api._view(prod)
    view.ledger.update_token(replace(listed[0], expires=datetime.now(UTC) - timedelta(1)))
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    with pytest.raises(TokenError, match="token 'ci' expired"):
        reopen(policed)
    monkeypatch.delenv("FLOWLAKE_TOKEN")
    view.ledger.update_token(replace(listed[0], expires=datetime.now(UTC) + timedelta(1)))
    api.revoke_token(prod, "ci")
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    with pytest.raises(TokenError, match="token 'ci' was revoked"):
        reopen(policed)
    everything = json.dumps([e.body() for e in api.audit_log(prod)])
    everything += json.dumps([dict(c.metadata) for c in prod.log("main")])
    everything += json.dumps([dict(commit.metadata)])
    assert secret not in everything
    assert {"token-create", "token-use", "token-revoke", "promote"} <= {
        e.action for e in api.audit_log(prod)
    }
    prod.close()


def test_only_production_creates_tokens(policed: object) -> None:
    staging = reopen(policed, perimeter="staging")
    with pytest.raises(PermissionDeniedError, match="needs the production perimeter"):
        api.create_token(staging, "ci", "production")
    assert api.list_tokens(staging) == []


def test_the_audit_chain_verifies_and_names_edits_and_cut_tails(policed: object) -> None:
    prod = reopen(policed, perimeter="production")
    api.create_token(prod, "ci", "production")
    branch = prod.branch("r1")
    branch.write_bytes("m", b"1")
    branch.commit("r1")
    merged = prod.merge(branch.name, into="main")
    anchored = int(merged.metadata[META_AUDIT_SEQ])
    assert api.verify_audit(prod) == []
    inner = api._view(prod)._inner
    entries = api.audit_log(prod)
    edited = json.loads(inner.open_read(ADMIN_BRANCH, audit_path(1)).read())
    edited["actor"] = "user:someone-else"
    inner.put_many(ADMIN_BRANCH, [(audit_path(1), json.dumps(edited).encode())])
    inner.commit(ADMIN_BRANCH, "tamper", {}, "mallory")
    assert any("entry 1" in p and "edited" in p for p in api.verify_audit(prod))
    inner.delete(ADMIN_BRANCH, [audit_path(e.seq) for e in entries if e.seq >= anchored])
    inner.commit(ADMIN_BRANCH, "cut the tail", {}, "mallory")
    assert any(f"entry {anchored}" in p and "missing" in p for p in api.verify_audit(prod))
    with pytest.raises(PermissionDeniedError, match="internal admin branch"):
        prod.backend.put_many(ADMIN_BRANCH, [("x", b"y")])
    prod.close()


def test_concurrent_audit_appends_lose_and_duplicate_nothing(policed: object) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prod = reopen(policed, perimeter="production")
    ledger = api._view(prod).ledger
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: ledger.append("user:x", "gate", {"i": i}), range(8)))
    entries = api.audit_log(prod)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert sorted(e.details["i"] for e in entries if e.action == "gate") == list(range(8))
    assert api.verify_audit(prod) == []
    prod.close()


# -- gates -------------------------------------------------------------------------------------


def log_stream(dep: tracking.Deployment, values: np.ndarray) -> None:
    per_day = math.ceil(len(values) / 4)
    for i, value in enumerate(values):
        stamp = T0 + timedelta(days=i // per_day, minutes=i % per_day)
        dep.log_metric("accuracy", float(value), step=i, timestamp=stamp)
    dep.close()


def candidate(lake: store.Lake, name: str, content: bytes) -> None:
    branch = lake.branch(name)
    branch.write_bytes("models/clf/model.pkl", content)
    branch.commit(f"train {name}")


def test_a_failing_metric_gate_blocks_and_the_passing_candidate_promotes(
    lake: store.Lake, lake_access: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    candidate(lake, "good", b"good")
    candidate(lake, "bad", b"bad")
    good = tracking.deploy(lake, "good", branch="good", deployed_at=T0)
    bad = tracking.deploy(lake, "bad", branch="bad", deployed_at=T0)
    log_stream(tracking.deployment(lake, "production"), rng.normal(0.8, 0.02, 120))
    log_stream(good, rng.normal(0.9, 0.02, 120))
    log_stream(bad, rng.normal(0.7, 0.02, 120))
    install_policy(lake, METRIC_GATE)
    prod = reopen(lake_access, perimeter="production")
    secret, _ = api.create_token(prod, "ci", "production", "1d")
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    ci = reopen(lake_access)
    main = ci.resolve("main")
    outcomes = api.check_gates(ci, "user:tester/bad")
    assert [o.passed for o in outcomes] == [False]
    with pytest.raises(GateFailedError, match=r"accuracy 0\.\d+ vs 0\.7\d+ = production") as info:
        ci.merge("user:tester/bad", into="main")
    assert info.value.failures and ci.resolve("main") == main
    promotion = tracking.promote(ci, "good")
    assert promotion.merge_commit == ci.resolve("main")
    assert ci.read_bytes("models/clf/model.pkl", "main") == b"good"
    unknown = parse_policy(POLICY.format(admin="*", gates='[[gates]]\nmetric = "latency <= 5"\n'))
    view = api._view(ci)
    bad_commit = ci.resolve("user:tester/bad")
    (outcome,) = evaluate(unknown, view._inner, view.ledger, bad_commit, view.identity)
    assert not outcome.passed and "metric 'latency' is unknown" in outcome.detail
    assert "accuracy" in outcome.detail  # the known metrics are listed
    gates = [e for e in api.audit_log(ci) if e.action == "gate"]
    assert [e.details["passed"] for e in gates] == [False, True]
    assert api.verify_audit(ci) == []
    ci.close()
    prod.close()


def test_check_run_and_approval_gates_hold_for_exactly_the_source_commit(
    policed: object,
) -> None:
    prod = reopen(policed, perimeter="production")
    text = POLICY.format(
        admin=admin(prod),
        gates='[[gates]]\ncheck_run = "tests"\n\n[[gates]]\napprovals = 1\n'
        'approvers = ["group:release"]\n',
    )
    update = prod.branch("gates")
    update.write_bytes("_flowlake/policy.toml", text.encode())
    update.commit("add gates")
    prod.merge(update.name, into="main")
    pr = prod.branch("pr")
    pr.write_bytes("m", b"1")
    pr.commit("change")
    with pytest.raises(GateFailedError) as info:
        prod.merge(pr.name, into="main")
    assert any("no run tagged check='tests'" in f for f in info.value.failures)
    assert any("approvals" in f and "0 of 1" in f for f in info.value.failures)
    with tracking.start_run(
        prod, pr.name, tags={"check": "tests"}, merge=False, snapshot_code=False
    ):
        pass
    with pytest.raises(PermissionDeniedError, match="approve another's commit"):
        api.approve(prod, pr.name)
    secret, _ = api.create_token(prod, "ci", "production")
    ci = store.open(policed.location, token=secret)  # type: ignore[attr-defined]
    api.approve(ci, pr.name)
    assert all(o.passed for o in api.check_gates(ci, pr.name))
    merged = ci.merge(pr.name, into="main")
    assert ci.read_bytes("m", "main") == b"1" and merged.metadata[META_AUDIT_SEQ]
    ci.close()
    prod.close()


# -- token scopes, own namespaces, the first policy's audit, the run's perimeter --------------


def test_token_scopes_limit_what_a_token_does_and_name_the_missing_scope(
    lake: store.Lake, lake_access: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = POLICY.format(admin=admin(lake), gates="").replace(
        '"token:ci"]', '"token:promoter", "token:reader"]'
    )
    setup = lake.branch("setup")
    setup.write_bytes("data/open.csv", b"x\n1\n")
    setup.write_bytes(POLICY_PATH, text.encode())
    setup.commit("policy")
    lake.merge(setup.name, into="main")
    policed = lake_access
    prod = reopen(policed, perimeter="production")
    with pytest.raises(InvalidArgumentError, match="unknown token scope 'deploy'; the scopes are"):
        api.create_token(prod, "ci", "production", scopes=("promote", "deploy"))
    assert api.list_tokens(prod) == []
    ready = prod.branch("ready")
    ready.write_bytes("m", b"1")
    ready.commit("ready")
    promoter, _ = api.create_token(prod, "promoter", "production", scopes=("promote",))
    reader, _ = api.create_token(prod, "reader", "production", scopes=("read",))
    assert {t.name: t.scopes for t in api.list_tokens(prod)} == {
        "promoter": ("promote",),
        "reader": ("read",),
    }
    main = prod.resolve("main")
    monkeypatch.setenv("FLOWLAKE_TOKEN", reader)
    ro = reopen(policed)
    assert ro.read_bytes("data/open.csv", "main") == b"x\n1\n"
    with pytest.raises(PermissionDeniedError, match=r"token:reader lacks the token scope 'write'"):
        ro.branch("scratch")
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'promote'"):
        ro.merge("user:tester/ready", into="main")
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'approve'"):
        api.approve(ro, "user:tester/ready")
    monkeypatch.setenv("FLOWLAKE_TOKEN", promoter)
    ci = reopen(policed)
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'write'"):
        ci.with_namespace("production").branch("hotfix")
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'admin'"):
        api.revoke_token(ci, "reader")
    assert ci.resolve("main") == main and len(ci.branches(all_namespaces=True)) == len(
        prod.branches(all_namespaces=True)
    )
    ci.merge("user:tester/ready", into="main")
    assert ci.read_bytes("m", "main") == b"1"
    policy = ci.read_bytes(POLICY_PATH, "main") + b"\n# reviewed\n"
    change = prod.branch("policy-edit")
    change.write_bytes(POLICY_PATH, policy)
    change.commit("edit the policy")
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'admin'"):
        ci.merge(change.name, into="main")
    ci.close()
    prod.close()


def test_token_create_validates_scopes_on_the_cli(
    policed: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    location = policed.location  # type: ignore[attr-defined]
    args = ["token", "create", "--name", "ci", "--perimeter", "production", "--lake", location]
    bad = CliRunner().invoke(app, [*args, "--scope", "promote,root"])
    assert bad.exit_code != 0 and "unknown token scope 'root'" in bad.output + str(bad.exception)
    good = CliRunner().invoke(app, [*args, "--scope", "promote", "--scope", "approve"])
    assert good.exit_code == 0, good.output
    assert "scopes approve,promote" in good.output
    listed = CliRunner().invoke(app, ["token", "list", "--json", "--lake", location])
    assert json.loads(listed.output)[0]["scopes"] == ["approve", "promote"]


def test_user_placeholder_lets_each_person_write_only_their_own_namespace(
    lake: store.Lake, lake_access: object
) -> None:
    text = POLICY.format(admin=admin(lake), gates="").replace(
        'write = ["user:*/**", "team:*/**"]', 'write = ["user:{user}/**"]'
    )
    setup = lake.branch("setup")
    setup.write_bytes(POLICY_PATH, text.encode())
    setup.commit("own namespaces only")
    lake.merge(setup.name, into="main")
    staging = reopen(lake_access, perimeter="staging")
    me = api.identity(staging).principal  # user:<login>: FLOWLAKE_USER, or the lakeFS user
    own = staging.with_namespace(me).branch("exp")
    own.write_bytes("a", b"1")
    own.commit("mine")
    other = "user:bob" if me != "user:bob" else "user:carol"
    with pytest.raises(PermissionDeniedError, match=rf"may not create branch {other}/exp"):
        staging.with_namespace(other).branch("exp")
    with pytest.raises(PolicyError, match=r"only \{user\} may appear here"):
        parse_policy(text.replace("user:{user}/**", "user:{login}/**"))
    with pytest.raises(PolicyError, match="none may appear here"):
        parse_policy(text.replace('read_deny = ["data/pii/**"]', 'read_deny = ["{user}/**"]'))
    staging.close()


def test_the_first_policy_merge_is_audited_and_anchored(lake: store.Lake) -> None:
    install_policy(lake)
    first = lake.log("main")[0]
    entries = api.audit_log(lake)
    assert [e.action for e in entries] == ["policy-change", "merge"]
    assert entries[0].actor == admin(lake) and entries[0].details["source"] == first.parents[-1]
    assert first.metadata[META_AUDIT_SEQ] == "1"
    assert api.verify_audit(lake) == []
    inner = api._view(lake)._inner
    inner.delete(ADMIN_BRANCH, [audit_path(e.seq) for e in entries])
    inner.commit(ADMIN_BRANCH, "erase the policy's installation", {}, "mallory")
    assert any("entry 1" in p and "missing" in p for p in api.verify_audit(lake))


def test_the_first_policy_merge_verifies_with_flowlake_audit(lake_access: object) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    install_policy(store.open(lake_access.location))  # type: ignore[attr-defined]
    done = CliRunner().invoke(
        app,
        ["audit", "--verify", "--lake", lake_access.location],  # type: ignore[attr-defined]
    )
    assert done.exit_code == 0, done.output
    assert "policy-change" in done.output and "audit chain intact: 2 entries" in done.output


def test_every_run_records_the_perimeter_and_old_runs_read_null(
    lake: store.Lake, lake_access: object
) -> None:
    import pyarrow.parquet as pq

    from tracking import layout

    lake.branch("exp")
    with tracking.start_run(lake, "exp", name="before", snapshot_code=False) as old:
        pass
    record = layout.run_file(old.id, layout.RUN_FILE)
    table = pq.read_table(io.BytesIO(lake.read_bytes(record, "exp")))
    assert table.column("perimeter").to_pylist() == [None]  # no policy, no perimeter asked
    legacy = lake.branch("legacy", source="exp")
    buffer = io.BytesIO()
    pq.write_table(table.drop_columns(["perimeter"]), buffer)
    legacy.write_bytes(record, buffer.getvalue())
    legacy.commit("a run record written before the perimeter column")
    install_policy(lake)
    prod = reopen(lake_access, perimeter="production")
    with tracking.start_run(prod, "exp", name="after", snapshot_code=False) as new:
        pass
    rows = tracking.sql(
        prod, "SELECT run_id, name, perimeter FROM runs ORDER BY name", ref="exp"
    ).to_pylist()
    assert rows == [
        {"run_id": new.id, "name": "after", "perimeter": "production"},
        {"run_id": old.id, "name": "before", "perimeter": None},
    ]
    legacy_rows = tracking.sql(prod, "SELECT perimeter FROM runs", ref="legacy").to_pylist()
    assert legacy_rows == [{"perimeter": None}]
    assert tracking.sql(prod, "SELECT * FROM problems", ref="legacy").num_rows == 0
    prod.close()
