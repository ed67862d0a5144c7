"""The policy file, machine tokens and the audit chain as values (storage-independent)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from store.errors import InvalidArgumentError, PermissionDeniedError, PolicyError, TokenError
from store.policy import audit, tokens
from store.policy.model import GateKind, glob_matches
from store.policy.parse import parse_policy

POLICY = """\
version = 1

[groups]
release = ["user:avery", "token:ci"]

[perimeters.production]
principals = ["group:release"]
write = ["production/**"]
max_gpus = 8

[perimeters.staging]
principals = ["*"]
write = ["user:*/**"]
read_deny = ["data/pii/**"]

[[gates]]
check_run = "tests"

[[gates]]
metric = "accuracy >= production.accuracy - 0.002"
require = "not worse"

[[gates]]
approvals = 1
approvers = ["group:release"]
"""

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_a_valid_policy_becomes_frozen_values() -> None:
    policy = parse_policy(POLICY)
    production = policy.perimeters["production"]
    assert production.max_gpus == 8
    assert policy.allows(production.principals, "token:ci")
    assert not policy.allows(production.principals, "user:blake")
    assert policy.allows(policy.perimeters["staging"].principals, "user:blake")
    check, metric, approvals = policy.gates
    assert (check.kind, check.name) == (GateKind.CHECK_RUN, "tests")
    assert (metric.metric, metric.op, metric.baseline_metric) == ("accuracy", ">=", "accuracy")
    assert metric.offset == pytest.approx(-0.002) and metric.require == "not worse"
    assert (approvals.count, approvals.approvers) == (1, ("group:release",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        production.max_gpus = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (("max_gpus = 8", "max_gpus = -1"), 9, "max_gpus"),
        (('principals = ["*"]', 'principals = ["bob"]'), 12, "not a principal"),
        (('check_run = "tests"', 'check_runs = "tests"'), 17, "unknown key 'check_runs'"),
        (("- 0.002", "minus 0.002"), 20, "metric condition"),
        (('require = "not worse"', 'require = "maybe"'), 21, "'require'"),
        (("approvals = 1", "approvals = 0"), 24, "approvals"),
        (("[perimeters.staging]", "[perimeters.staging]\nwrite = [1,"), 13, "TOML"),
        (("version = 1", "version = 2"), 1, "version"),
    ],
)
def test_an_invalid_policy_names_its_line(edit: tuple[str, str], line: int, words: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(POLICY.replace(*edit))
    assert raised.value.line == line
    assert words in str(raised.value) and f"line {line}" in str(raised.value)


def test_a_policy_without_production_is_refused() -> None:
    text = POLICY.replace("[perimeters.production]", "[perimeters.prod]")
    with pytest.raises(PolicyError, match="'production' must be defined"):
        parse_policy(text)


def test_globs_keep_single_stars_within_a_segment() -> None:
    assert glob_matches("user:*/**", "user:avery/exp/deep")
    assert not glob_matches("user:*", "user:avery/exp")
    assert glob_matches("data/pii/**", "data/pii/a/b.parquet")
    assert not glob_matches("data/pii/**", "data/piiz/a")


def test_a_token_is_shown_once_and_stored_only_as_a_digest() -> None:
    secret, record = tokens.create("ci", "production", timedelta(days=30), NOW)
    assert tokens.TOKEN_PATTERN.fullmatch(secret) and tokens.is_well_formed(secret)
    assert secret not in repr(record) and record.digest == tokens.digest(secret)
    assert tokens.authenticate([record], secret, NOW + timedelta(days=1)) == record


def test_a_mistyped_token_fails_its_checksum_before_any_lookup() -> None:
    secret, record = tokens.create("ci", "production", timedelta(days=30), NOW)
    typo = secret[:10] + ("A" if secret[10] != "A" else "B") + secret[11:]
    assert not tokens.is_well_formed(typo)
    with pytest.raises(TokenError, match="malformed") as raised:
        tokens.authenticate([record], typo, NOW)
    assert typo not in str(raised.value)


def test_expired_revoked_and_unknown_tokens_fail_without_showing_the_secret() -> None:
    secret, record = tokens.create("ci", "production", timedelta(hours=1), NOW)
    other, _ = tokens.create("other", "production", timedelta(hours=1), NOW)
    cases = [
        ([record], secret, NOW + timedelta(hours=2), "expired"),
        ([tokens.revoke(record, NOW)], secret, NOW, "revoked"),
        ([record], other, NOW, "unknown"),
    ]
    for records, used, when, words in cases:
        with pytest.raises(TokenError, match=words) as raised:
            tokens.authenticate(records, used, when)
        assert isinstance(raised.value, PermissionDeniedError)
        assert used not in str(raised.value)


@pytest.mark.parametrize("text", ["30", "0d", "400d", "1y", "-1d", "1d;rm"])
def test_bad_token_lifetimes_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="lifetime"):
        tokens.parse_lifetime(text)


def test_token_names_are_unique_and_well_formed() -> None:
    _, record = tokens.create("ci", "production", timedelta(days=1), NOW)
    with pytest.raises(InvalidArgumentError, match="exists"):
        tokens.create("ci", "production", timedelta(days=1), NOW, existing=[record])
    with pytest.raises(InvalidArgumentError, match="token name"):
        tokens.create("ci/../x", "production", timedelta(days=1), NOW)


def _chain(n: int) -> list[audit.AuditEntry]:
    entries: list[audit.AuditEntry] = []
    for i in range(n):
        last = entries[-1] if entries else None
        when = NOW + timedelta(minutes=i)
        entries.append(audit.append(last, "token:ci", "promote", {"commit": f"c{i}"}, when))
    return entries


def test_an_untouched_audit_chain_verifies() -> None:
    entries = _chain(5)
    assert audit.verify(entries, anchors=[(5, entries[-1].hash)]) == []


def test_an_edited_entry_is_detected_and_named() -> None:
    entries = _chain(5)
    entries[2] = dataclasses.replace(entries[2], actor="user:mallory")
    assert audit.verify(entries) == ["entry 3 (promote) was edited after it was written"]


def test_a_deleted_entry_is_detected() -> None:
    entries = _chain(5)
    del entries[1]
    problems = audit.verify(entries)
    assert any("one was removed" in p for p in problems)


def test_a_cut_off_tail_is_detected_by_the_anchor() -> None:
    entries = _chain(5)
    assert audit.verify(entries[:3], anchors=[(5, entries[4].hash)]) == [
        "entry 5, anchored in a promotion commit, is missing"
    ]


def test_audit_details_must_be_plain_values() -> None:
    with pytest.raises(InvalidArgumentError, match="audit detail"):
        audit.append(None, "user:a", "merge", {"x": 1.5}, NOW)  # type: ignore[dict-item]
