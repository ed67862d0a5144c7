"""A compute job acts in the perimeter, and as the principal, its submitter's lake was opened
with, whatever the submitting process's ``FLOWLAKE_PERIMETER`` says; a machine token reaches the
job only through ``FLOWLAKE_TOKEN`` in its environment and is never written into the job's
state or the lake.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_policy_enforce import install_policy, reopen

import compute
import store
import tracking
from store.errors import PermissionDeniedError, TokenError
from store.policy import api
from store.policy.enforce import META_PERIMETER, META_PRINCIPAL, perimeter_of

JOB_WAIT_S = 180


@pytest.fixture(autouse=True)
def _machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWLAKE_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("FLOWLAKE_COMPUTE_DIR", str(tmp_path / "compute-state"))
    monkeypatch.delenv("FLOWLAKE_PERIMETER", raising=False)
    monkeypatch.delenv("FLOWLAKE_TOKEN", raising=False)


def report() -> dict[str, Any]:
    """Write an output and say which perimeter the job's lake acts in and what it may read."""
    ctx = compute.context()
    ctx.branch.write_bytes("out/seen.txt", b"seen")
    try:
        ctx.lake.read_bytes("data/pii/people.csv")
        pii = True
    except PermissionError:
        pii = False
    return {"perimeter": perimeter_of(ctx.lake.backend), "pii": pii}


def job_commits(lake: store.Lake, branch: str) -> list[dict[str, str]]:
    """The metadata of the commits on ``branch`` that are not on ``main``."""
    main = {c.id for c in lake.log("main")}
    return [dict(c.metadata) for c in lake.log(branch) if c.id not in main]


def run_perimeters(lake: store.Lake, branch: str) -> list[Any]:
    rows = tracking.sql(lake, "SELECT perimeter FROM runs", ref=branch).to_pylist()
    return [row["perimeter"] for row in rows]


@pytest.mark.parametrize(("perimeter", "ambient"), [("staging", "production"), ("production", "")])
def test_a_job_acts_in_the_perimeter_its_lake_was_opened_with(
    lake: store.Lake,
    lake_access: object,
    monkeypatch: pytest.MonkeyPatch,
    perimeter: str,
    ambient: str,
) -> None:
    install_policy(lake)
    submitter = reopen(lake_access, perimeter=perimeter)
    principal = api.identity(submitter).principal
    if ambient:  # the submitting process says otherwise; the lake's own perimeter wins
        monkeypatch.setenv("FLOWLAKE_PERIMETER", ambient)
    job = compute.submit(report, lake=submitter, output_branch="out")
    result = job.wait(timeout=JOB_WAIT_S)
    assert result == {"perimeter": perimeter, "pii": perimeter == "production"}
    assert run_perimeters(submitter, "out") == [perimeter]
    commits = job_commits(submitter, "out")
    assert commits, "the job made no commit on its output branch"
    assert {c[META_PERIMETER] for c in commits} == {perimeter}
    assert {c[META_PRINCIPAL] for c in commits} == {principal}
    submitter.close()


def test_a_new_output_branch_the_policy_forbids_is_refused_at_submit(
    embedded_lake: store.Lake,
) -> None:
    """The job's attempt creates a new output branch; a perimeter that may not write it is
    refused at submit, before anything is created."""
    install_policy(embedded_lake)
    staging = store.open(embedded_lake.location, perimeter="staging")
    branches = staging.branches(all_namespaces=True)
    with pytest.raises(PermissionDeniedError, match="create branch"):
        compute.submit(report, lake=staging, output_branch="production/release-candidate")
    assert staging.branches(all_namespaces=True) == branches
    assert compute.jobs(staging) == []
    staging.close()


def _files_holding(secret: bytes, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                found.append(str(path))
    return found


def test_a_token_reaches_a_job_only_through_the_environment_and_is_never_written(
    lake: store.Lake,
    lake_access: object,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    install_policy(lake)
    prod = reopen(lake_access, perimeter="production")
    secret, _ = api.create_token(prod, "ci", "production", "30d")
    by_argument = store.open(lake.location, token=secret)
    branches = {b.name for b in prod.branches(all_namespaces=True)}
    with pytest.raises(TokenError, match="FLOWLAKE_TOKEN") as refused:
        compute.submit(report, lake=by_argument, output_branch="ci-out")
    assert secret not in str(refused.value)
    assert compute.jobs(prod) == []
    assert {b.name for b in prod.branches(all_namespaces=True)} == branches
    by_argument.close()

    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    ci = reopen(lake_access)
    job = compute.submit(report, lake=ci, output_branch="ci-out")
    assert job.wait(timeout=JOB_WAIT_S) == {"perimeter": "production", "pii": True}
    assert run_perimeters(prod, "ci-out") == ["production"]
    commits = job_commits(prod, "ci-out")
    assert commits and {c[META_PRINCIPAL] for c in commits} == {"token:ci"}
    spec = json.loads(next(tmp_path.rglob("jobs/*/spec.json")).read_text())
    assert (spec["perimeter"], spec["principal"]) == ("production", "token:ci")
    roots = [tmp_path]
    if request.node.callspec.params["lake"] != "embedded":
        roots.append(request.getfixturevalue("lakefs_server").data_dir / "block")
    assert _files_holding(secret.encode(), *roots) == []
    everything = json.dumps(commits) + json.dumps([e.body() for e in api.audit_log(prod)])
    assert secret not in everything
    ci.close()
    prod.close()


def test_a_job_whose_environment_opens_the_lake_as_someone_else_fails_and_merges_nothing(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_policy(embedded_lake)
    prod = store.open(embedded_lake.location, perimeter="production")
    secret, _ = api.create_token(prod, "ci", "production", "30d")
    out = prod.branch("out")
    before = out.head().id
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)  # set after the lake was opened as a person
    job = compute.submit(report, lake=prod, output_branch="out")
    with pytest.raises(
        compute.JobFailedError, match="opens the lake as token:ci in perimeter .production."
    ):
        job.wait(timeout=JOB_WAIT_S)
    assert out.head().id == before
    prod.close()


def test_a_ray_job_acts_in_the_perimeter_its_lake_was_opened_with(
    embedded_lake: store.Lake, ray_cluster: object
) -> None:
    install_policy(embedded_lake)
    prod = store.open(embedded_lake.location, perimeter="production")
    job = compute.submit(report, lake=prod, output_branch="out", backend="ray")
    assert job.wait(timeout=JOB_WAIT_S) == {"perimeter": "production", "pii": True}
    assert run_perimeters(prod, "out") == ["production"]
    assert {c[META_PERIMETER] for c in job_commits(prod, "out")} == {"production"}
    prod.close()


def report_and_pid() -> dict[str, Any]:
    return {**report(), "pid": os.getpid()}


def _ray_task_events() -> list[Any]:
    """Every task event the session's Ray holds: what its state API and dashboard show."""
    import ray

    return list(ray._private.state.state._get_all_task_events())


def test_a_ray_job_acts_as_the_token_ray_never_records(
    embedded_lake: store.Lake, ray_cluster: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    install_policy(embedded_lake)
    prod = store.open(embedded_lake.location, perimeter="production")
    secret, _ = api.create_token(prod, "ci", "production", "30d")
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    ci = store.open(embedded_lake.location)
    job = compute.submit(report_and_pid, lake=ci, output_branch="ci-out", backend="ray", name="ci")
    result = job.wait(timeout=JOB_WAIT_S)
    assert (result["perimeter"], result["pii"]) == ("production", True)
    assert {c[META_PRINCIPAL] for c in job_commits(prod, "ci-out")} == {"token:ci"}

    # Ray records the task with its runtime_env (read once it has, so the check is not vacuous)...
    def job_events() -> list[Any]:
        return [e for e in _ray_task_events() if e.task_info.name == "flowlake:ci"]

    deadline = time.monotonic() + 60
    while not any(e.task_info.runtime_env_info.serialized_runtime_env for e in job_events()):
        assert time.monotonic() < deadline, "Ray never recorded the job's task"
        time.sleep(0.2)
    # ...and neither that record, its session's logs and files, nor the worker's own start
    # environment holds the secret.
    assert not [e for e in _ray_task_events() if secret.encode() in e.SerializeToString()]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    assert _files_holding(secret.encode(), session) == []
    with contextlib.suppress(FileNotFoundError):  # the worker may have exited since
        assert secret.encode() not in Path(f"/proc/{result['pid']}/environ").read_bytes()
    ci.close()
    prod.close()
