"""The server-side gate on lakeFS: what the lakeFS server itself refuses, and what it cannot.

Every test talks to the real lakeFS server of the session (``tests/lakefs_server.py``), whose
environment holds ``LAKEFSACTION_FLOWLAKE_GATE_KEY``; the promoter's copy comes from
``FLOWLAKE_GATE_KEY`` only. The ``test_known_limitation_*`` tests assert lakeFS OSS 1.86.0
behaviour that leaves the gate open (docs/policy.md); each fails if lakeFS changes it, so the
documentation and the hook can be revisited.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extras import import_extra

import store
import tracking
from store.errors import GateFailedError, InvalidArgumentError, PermissionDeniedError

lakefs = import_extra("lakefs", "lakefs")
lakefs_sdk = import_extra("lakefs_sdk", "lakefs")
gatehook = import_extra("store.backends.lakefs.gatehook", "lakefs")

POLICY = """\
version = 1

[perimeters.production]
principals = ["*"]
write = ["**"]

[perimeters.staging]
principals = ["*"]
write = ["**"]

[[gates]]
check_run = "tests"
"""


class Repo:
    """A lakeFS repository with flowlake's gate hook on ``main``, and raw SDK clients to it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.name = f"t-{uuid.uuid4().hex[:16]}"
        self.lake = server.open_lake(self.name)
        self.client = lakefs.Client(
            host=server.endpoint,
            username=server.access_key_id,
            password=server.secret_access_key,
        )
        self.sdk = self.client.sdk_client
        self.repo = lakefs.Repository(self.name, client=self.client)

    def reopen(self, **kwargs: str) -> store.Lake:
        return store.open(
            f"lakefs://{self.name}",
            endpoint=self.server.endpoint,
            access_key_id=self.server.access_key_id,
            secret_access_key=self.server.secret_access_key,
            **kwargs,
        )

    def main_head(self) -> str:
        return str(self.repo.branch("main").get_commit().id)

    def raw_branch(self, name: str, source: str = "main", data: bytes = b"x") -> Any:
        """A branch made, written and committed with the raw ``lakefs`` SDK only."""
        branch = self.repo.branch(name).create(source_reference=source)
        branch.object(f"data/{name}.txt").upload(data)
        branch.commit(f"raw change on {name}")
        return branch

    def raw_merge(self, source: str, metadata: dict[str, str] | None = None) -> str:
        merge = lakefs_sdk.Merge(metadata=metadata or {})  # type: ignore[call-arg]
        result = self.sdk.refs_api.merge_into_branch(self.name, source, "main", merge=merge)
        return str(result.reference)

    def hook_on_main(self) -> bool:
        return gatehook.installed(self.sdk, self.name, "main")


@pytest.fixture
def gate_key(lakefs_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The promoter holds the same key as the server."""
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, lakefs_server.gate_key)
    return str(lakefs_server.gate_key)


@pytest.fixture
def repo(lakefs_server: Any, gate_key: str) -> Iterator[Repo]:
    """A fresh repository with the gate hook installed on ``main`` (``main`` protected).

    Merges are gated as soon as the install returns, so it does not wait out lakeFS's actions
    cache; only reverts and cherry-picks need that (``enforced_repo``).
    """
    made = Repo(lakefs_server)
    assert made.lake.backend.install_gate_hook(wait=False) is not None
    yield made
    made.lake.close()


@pytest.fixture
def enforced_repo(lakefs_server: Any, gate_key: str) -> Iterator[Repo]:
    """:func:`repo`, installed the way users do: waiting until every hook event is in force."""
    made = Repo(lakefs_server)
    assert made.lake.backend.install_gate_hook() is not None
    yield made
    made.lake.close()


def refusal(exc: BaseException) -> str:
    return str(getattr(exc, "body", None) or exc)


def test_a_raw_sdk_merge_of_an_ungated_branch_into_main_is_refused_by_the_server(
    repo: Repo, gate_key: str
) -> None:
    before = repo.main_head()
    feature = repo.raw_branch("feature")
    with pytest.raises(lakefs.exceptions.ServerException) as info:
        feature.merge_into(repo.repo.branch("main"))
    text = refusal(info.value)
    assert gatehook.HOOK_ID in text and "pre-merge hook aborted" in text
    assert "no valid gate attestation" in text and gatehook.CLIENT_KEY_ENV in text
    assert gate_key not in text
    assert repo.main_head() == before


def test_a_tampered_or_replayed_attestation_is_refused(repo: Repo, gate_key: str) -> None:
    before = repo.main_head()
    feature = repo.raw_branch("feature")
    source = str(feature.get_commit().id)
    other = str(repo.raw_branch("other").get_commit().id)
    good = gatehook.attest(gate_key, repo.name, "main", "merge", source)
    forged = {
        "zeros": "0" * 64,
        "flipped": good[:-1] + ("0" if good[-1] != "0" else "1"),
        "another source": gatehook.attest(gate_key, repo.name, "main", "merge", other),
        "another repository": gatehook.attest(gate_key, "elsewhere", "main", "merge", source),
        "another key": gatehook.attest("k" * 64, repo.name, "main", "merge", source),
    }
    for why, value in forged.items():
        with pytest.raises(lakefs_sdk.ApiException) as info:
            repo.raw_merge("feature", {gatehook.ATTESTATION_KEY: value})
        assert gatehook.HOOK_ID in refusal(info.value), why
    assert repo.main_head() == before
    # The untampered value is accepted, which shows the refusals above were about the value.
    repo.raw_merge("feature", {gatehook.ATTESTATION_KEY: good})
    assert repo.main_head() != before


def test_promotion_through_passing_gates_succeeds_with_the_hook_and_leaks_no_key(
    repo: Repo, gate_key: str
) -> None:
    setup = repo.lake.branch("setup")
    setup.write_bytes("_flowlake/policy.toml", POLICY.encode())
    setup.commit("policy")
    repo.lake.merge(setup.name, into="main")  # the first policy, through the hook
    prod = repo.reopen(perimeter="production")
    pr = prod.branch("pr")
    pr.write_bytes("model/weights.bin", b"w1")
    pr.commit("candidate")
    with pytest.raises(GateFailedError):  # refused client-side; the server is not asked
        prod.merge(pr.name, into="main")
    with pytest.raises(lakefs_sdk.ApiException) as raw:
        repo.raw_merge(pr.backend_name)
    assert gatehook.HOOK_ID in refusal(raw.value)
    with tracking.start_run(
        prod, pr.name, tags={"check": "tests"}, merge=False, snapshot_code=False
    ):
        pass
    merged = prod.merge(pr.name, into="main")
    assert prod.read_bytes("model/weights.bin", "main") == b"w1"
    stored = repo.sdk.commits_api.get_commit(repo.name, merged.id).metadata
    source = merged.parents[1]
    assert stored[gatehook.ATTESTATION_KEY] == gatehook.attest(
        gate_key, repo.name, "main", "merge", source
    )
    for commit in repo.repo.branch("main").log(max_amount=50):
        assert not any(gate_key in f"{k}={v}" for k, v in (commit.metadata or {}).items())
        assert gate_key not in commit.message
    assert gatehook.ATTESTATION_KEY not in merged.metadata  # flowlake's own view hides it
    namespace = Path(repo.server.data_dir, "block", repo.name)
    for path in namespace.rglob("*"):  # objects and lakeFS's stored hook-run logs
        if path.is_file():
            assert gate_key.encode() not in path.read_bytes(), path
    prod.close()


def test_without_the_key_a_flowlake_merge_is_refused_by_the_server_naming_the_hook(
    repo: Repo, gate_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = repo.main_head()
    feature = repo.lake.branch("feature")
    feature.write_bytes("a", b"1")
    feature.commit("a")
    monkeypatch.delenv(gatehook.CLIENT_KEY_ENV)
    with pytest.raises(PermissionDeniedError) as info:
        repo.lake.merge(feature.name, into="main")
    assert gatehook.HOOK_ID in str(info.value) and gatehook.CLIENT_KEY_ENV in str(info.value)
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, "w" * 64)  # a key, but not the server's
    with pytest.raises(PermissionDeniedError) as wrong:
        repo.lake.merge(feature.name, into="main")
    assert "w" * 64 not in str(wrong.value) and gate_key not in str(wrong.value)
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, "short")
    with pytest.raises(InvalidArgumentError, match="at least 32 characters") as short:
        repo.lake.merge(feature.name, into="main")
    assert "short" not in str(short.value).replace("at least", "")
    assert repo.main_head() == before


def test_raw_reverts_cherry_picks_and_imports_on_main_are_refused_and_flowlake_reverts_pass(
    enforced_repo: Repo,
) -> None:
    repo = enforced_repo
    feature = repo.lake.branch("feature")
    feature.write_bytes("a", b"1")
    feature.commit("a")
    merged = repo.lake.merge(feature.name, into="main")
    repo.raw_branch("picked")
    with pytest.raises(lakefs_sdk.ApiException) as pick:
        repo.sdk.branches_api.cherry_pick(
            repo.name,
            "main",
            lakefs_sdk.CherryPickCreation(ref="picked"),  # type: ignore[call-arg]
        )
    assert "pre-cherry-pick" in refusal(pick.value) and gatehook.HOOK_ID in refusal(pick.value)
    with pytest.raises(lakefs_sdk.ApiException) as revert:
        repo.sdk.branches_api.revert_branch(
            repo.name,
            "main",
            lakefs_sdk.RevertCreation(ref=merged.id, parent_number=1),  # type: ignore[call-arg]
        )
    assert "pre-revert" in refusal(revert.value) and gatehook.HOOK_ID in refusal(revert.value)
    external = Path(repo.server.data_dir, "external", repo.name)
    external.mkdir(parents=True)
    (external / "unchecked.csv").write_text("x\n1\n")
    importer = repo.repo.branch("main").import_data(commit_message="import into main")
    with pytest.raises(lakefs.exceptions.LakeFSException) as imported:
        importer.prefix(f"local://{external}/", destination="imported/").run()
    assert gatehook.HOOK_ID in str(imported.value)  # lakeFS imports commit via pre-commit
    assert repo.main_head() == merged.id
    repo.lake.revert("main", merged.id)
    assert repo.main_head() != merged.id
    assert not repo.lake.exists("a", "main")


def test_installing_is_idempotent_and_needs_the_servers_key(
    lakefs_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = Repo(lakefs_server)
    before = fresh.main_head()
    monkeypatch.delenv(gatehook.CLIENT_KEY_ENV, raising=False)
    with pytest.raises(InvalidArgumentError, match=gatehook.CLIENT_KEY_ENV):
        fresh.lake.backend.install_gate_hook()
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, "v" * 64)
    with pytest.raises(PermissionDeniedError, match=gatehook.HOOK_ID):
        fresh.lake.backend.install_gate_hook()
    assert fresh.main_head() == before and not fresh.hook_on_main()
    assert [b.id for b in fresh.repo.branches()] == ["main"]  # no scratch branch left
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, lakefs_server.gate_key)
    assert fresh.lake.backend.install_gate_hook(wait=False) is not None
    assert fresh.hook_on_main()
    assert fresh.lake.backend.install_gate_hook() is None
    body = gatehook.action_document("main").decode()
    assert "{{ ENV.LAKEFSACTION_FLOWLAKE_GATE_KEY }}" in body
    assert lakefs_server.gate_key not in body
    fresh.lake.close()


def test_the_cli_installs_the_hook_reports_it_and_never_prints_the_key(
    lakefs_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    fresh = Repo(lakefs_server)
    env = {
        "LAKECTL_SERVER_ENDPOINT_URL": lakefs_server.endpoint,
        "LAKECTL_CREDENTIALS_ACCESS_KEY_ID": lakefs_server.access_key_id,
        "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY": lakefs_server.secret_access_key,
        gatehook.CLIENT_KEY_ENV: lakefs_server.gate_key,
    }
    monkeypatch.setattr(gatehook, "ACTIONS_CACHE_S", 0.0)
    location = ["--lake", f"lakefs://{fresh.name}"]
    outputs = []
    for args in (["status", "--json"], ["install"], ["install", "--json"], ["status", "--json"]):
        result = CliRunner().invoke(app, ["gate-hook", *args, *location], env=env)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert json.loads(outputs[0]) == {"installed": False, "key_set": True}
    assert "gate hook installed on main" in outputs[1]
    assert json.loads(outputs[2])["changed"] is False
    assert json.loads(outputs[3]) == {"installed": True, "key_set": True}
    assert not any(lakefs_server.gate_key in out for out in outputs)
    embedded = store.open(tmp_path / "lake")
    embedded.close()
    result = CliRunner().invoke(app, ["gate-hook", "install", "--lake", str(tmp_path / "lake")])
    assert result.exit_code != 0 and "not a lakeFS lake" in result.output
    fresh.lake.close()


def test_installing_the_hook_is_audited_and_anchored_like_a_policy_change(
    lakefs_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from store.policy import api
    from store.policy.enforce import META_AUDIT_HASH, META_AUDIT_SEQ, META_PERIMETER
    from ui.cli import app

    monkeypatch.setattr(gatehook, "ACTIONS_CACHE_S", 0.0)
    fresh = Repo(lakefs_server)
    install_policy = fresh.lake.branch("policy")
    install_policy.write_bytes("_flowlake/policy.toml", POLICY.encode())
    install_policy.commit("policy")
    fresh.lake.merge(install_policy.name, into="main")
    lake = fresh.reopen(perimeter="production")
    before = fresh.main_head()
    already = len(api.audit_log(lake))
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, "w" * 64)
    with pytest.raises(PermissionDeniedError, match=gatehook.HOOK_ID):
        gatehook.install_on(lake)
    assert fresh.main_head() == before
    monkeypatch.setenv(gatehook.CLIENT_KEY_ENV, lakefs_server.gate_key)
    commit = gatehook.install_on(lake)
    assert commit is not None and fresh.main_head() == commit
    entries = api.audit_log(lake)[already:]
    assert [e.action for e in entries] == [
        "gate-hook-install",
        "gate-hook-install-failed",
        "gate-hook-install",
        "merge",
    ]
    actor = f"user:{fresh.sdk.auth_api.get_current_user().user.id}"
    assert {e.actor for e in entries} == {actor}
    assert entries[2].details == {"into": "main", "base": before}
    assert entries[3].details["commit"] == commit
    merged = lake.log("main", 1)[0]
    assert merged.metadata[META_AUDIT_SEQ] == str(entries[2].seq)
    assert merged.metadata[META_AUDIT_HASH] == entries[2].hash
    assert merged.metadata[META_PERIMETER] == "production"
    assert api.verify_audit(lake) == []
    assert gatehook.install_on(lake) is None  # nothing changed, nothing audited
    assert len(api.audit_log(lake)) == already + 4
    env = {
        "LAKECTL_SERVER_ENDPOINT_URL": lakefs_server.endpoint,
        "LAKECTL_CREDENTIALS_ACCESS_KEY_ID": lakefs_server.access_key_id,
        "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY": lakefs_server.secret_access_key,
        "COLUMNS": "200",
    }
    location = f"lakefs://{fresh.name}"
    shown = CliRunner().invoke(app, ["audit", "--verify", "--lake", location], env=env)
    assert shown.exit_code == 0, shown.output
    assert "gate-hook-install" in shown.output
    assert f"audit chain intact: {already + 4} entries" in shown.output
    listed = CliRunner().invoke(app, ["audit", "--verify", "--json", "--lake", location], env=env)
    data = json.loads(listed.output)
    assert data["problems"] == []
    assert [e["action"] for e in data["entries"]][-2:] == ["gate-hook-install", "merge"]
    lake.close()


# -- what lakeFS OSS 1.86.0 does not let the hook stop (docs/policy.md) -----------------------


def test_known_limitation_a_branch_that_deletes_the_hook_merges_ungated_and_removes_it(
    repo: Repo,
) -> None:
    # lakeFS loads pre-merge actions from the source commit: a source without the file runs
    # no hook, and the merge deletes the hook from main too.
    branch = repo.repo.branch("drop").create(source_reference="main")
    branch.object(gatehook.ACTION_PATH).delete()
    branch.object("data/unchecked.txt").upload(b"x")
    branch.commit("drop the gate")
    repo.raw_merge("drop")
    assert not repo.hook_on_main()


def test_known_limitation_an_edited_hook_on_the_source_decides_its_own_merge(repo: Repo) -> None:
    branch = repo.repo.branch("edit").create(source_reference="main")
    lenient = gatehook.action_document("main").replace(
        b"        local hmac", b"        do return end\n        local hmac"
    )
    branch.object(gatehook.ACTION_PATH).upload(lenient)
    branch.commit("a gate that passes everything")
    repo.raw_merge("edit")
    assert not repo.hook_on_main()


def test_known_limitation_a_branch_from_a_commit_older_than_the_hook_merges_ungated(
    repo: Repo,
) -> None:
    first = list(repo.repo.branch("main").log())[-1].id  # the repository's first commit
    repo.raw_branch("old", source=first)
    repo.raw_merge("old")
    assert repo.hook_on_main()  # the hook stays, but did not run on this merge


def test_known_limitation_a_pre_commit_guard_cannot_protect_its_own_file(repo: Repo) -> None:
    # lakeFS loads pre-commit actions from the committing branch with its staged changes, so
    # a guard is bypassed by staging its own deletion (and would be by staging an edit).
    guard = (
        "name: guard\non:\n  pre-commit:\nhooks:\n  - id: guard\n    type: lua\n"
        "    properties:\n      script: |\n"
        '        if action.commit.message ~= "allow" then error("guarded") end\n'
    )
    branch = repo.repo.branch("guarded").create(source_reference="main")
    branch.object("_lakefs_actions/guard.yaml").upload(guard.encode())
    guarded = branch.commit("allow").id
    branch.object("data/x.txt").upload(b"x")
    with pytest.raises(lakefs.exceptions.ServerException, match="guarded"):
        branch.commit("refused: the guard is active")
    # A second branch from the same commit (lakeFS caches a branch's action list for a few
    # seconds by its name, which would hide the staged deletion on the first for that long).
    other = repo.repo.branch("unguarded").create(source_reference=guarded)
    other.object("_lakefs_actions/guard.yaml").delete()
    other.object("data/x.txt").upload(b"x")
    other.commit("not refused: the guard was loaded from the staged state, without it")


def test_known_limitation_any_repository_writer_can_read_the_servers_key(repo: Repo) -> None:
    # Every action's {{ ENV.... }} argument is filled in, whoever wrote it: the key guards
    # against mistakes and forged metadata, not against a writer who sets out to read it. For
    # Lua hooks lakeFS filters by the prefix "LAKEFS", so its own LAKEFS_* settings leak too.
    expected = {
        "LAKEFSACTION_FLOWLAKE_GATE_KEY": repo.server.gate_key,
        "LAKEFS_LISTEN_ADDRESS": repo.server.endpoint.removeprefix("http://"),
    }
    for number, (variable, value) in enumerate(expected.items()):
        probe = (
            "name: probe\non:\n  pre-commit:\nhooks:\n  - id: probe\n    type: lua\n"
            "    properties:\n      args:\n"
            f'        k: "{{{{ ENV.{variable} }}}}"\n'
            '      script: |\n        error("k=" .. args.k)\n'
        )
        # One branch per probe: lakeFS caches a branch's action list by its name.
        branch = repo.repo.branch(f"probe-{number}").create(source_reference="main")
        branch.object("_lakefs_actions/probe.yaml").upload(probe.encode())
        with pytest.raises(lakefs.exceptions.ServerException) as info:
            branch.commit("probe")
        assert f"k={value}" in refusal(info.value), variable
