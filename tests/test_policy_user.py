"""Faults found by using perimeters, tokens, gates and the audit log as a platform team would
(each test names the behaviour a user relies on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_policy_cli import POLICY as CLI_POLICY
from test_policy_cli import create_token, flowlake
from test_policy_enforce import policed, reopen

import store
from store.policy import api

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
    lake = tmp_path / "lake"
    install = store.open(lake)
    setup = install.branch("setup")
    setup.write_bytes("_flowlake/policy.toml", CLI_POLICY.encode())
    setup.commit("policy")
    install.merge(setup.name, into="main")
    install.close()
    create_token(lake, monkeypatch)
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    assert flowlake(lake, "token", "revoke", "ci")[0] == 0
    code, out = flowlake(lake, "token", "revoke", "ci")
    assert code == 0, out
    assert "already revoked on" in out and "uncommitted" not in out
