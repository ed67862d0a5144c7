"""``flowlake token / audit / gates / approve / check`` and the CI workflow in examples/ci/.

The workflow test runs the ``run:`` scripts of the flowlake steps of
``examples/ci/github-actions.yml`` with bash, in order, against a local lake, with the machine
token only in the environment, as GitHub Actions would.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import store
import tracking
from store.errors import PermissionDeniedError
from store.policy import api
from store.processes import pid_alive
from ui.cli import app

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
POLICY = """\
version = 1

[perimeters.production]
principals = ["user:tester", "token:ci"]
write = ["production/**", "team:*/**", "user:*/**"]

[perimeters.staging]
principals = ["*"]
write = ["user:*/**"]

[[gates]]
check_run = "tests"
"""


def flowlake(lake: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--lake", str(lake)], env=env)
    return result.exit_code, result.output + (
        str(result.exception or "") if result.exit_code else ""
    )


@pytest.fixture
def policed_lake(tmp_path: Path) -> Path:
    return lake_with_policy(tmp_path / "lake")


def lake_with_policy(path: Path) -> Path:
    """A new lake at ``path`` whose ``main`` holds :data:`POLICY`."""
    lake = store.open(path)
    setup = lake.branch("setup")
    setup.write_bytes("_flowlake/policy.toml", POLICY.encode())
    setup.commit("policy")
    lake.merge(setup.name, into="main")
    lake.close()
    return path


def create_token(lake: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """``flowlake token create`` with ``args`` (default: ``--name ci --perimeter production``)
    in the production perimeter; returns the secret it printed."""
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    args = args or ("token", "create", "--name", "ci", "--perimeter", "production")
    code, out = flowlake(lake, *args)
    monkeypatch.delenv("FLOWLAKE_PERIMETER")
    assert code == 0, out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("flk_")
    return secret


def test_token_commands_never_print_the_secret_again(
    policed_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = create_token(policed_lake, monkeypatch)
    outputs = [
        flowlake(policed_lake, "token", "list", "--json"),
        flowlake(policed_lake, "token", "list"),
        flowlake(policed_lake, "audit", "--json"),
    ]
    listed = json.loads(outputs[0][1])
    assert [(t["name"], t["perimeter"], t["revoked"]) for t in listed] == [
        ("ci", "production", None)
    ]
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret)
    outputs.append(flowlake(policed_lake, "audit", "--verify", "--json"))
    outputs.append(flowlake(policed_lake, "token", "revoke", "ci"))
    refused = flowlake(policed_lake, "token", "list")
    assert refused[0] != 0 and "revoked" in refused[1]
    outputs.append(refused)
    monkeypatch.setenv("FLOWLAKE_TOKEN", secret + "x")
    outputs.append(flowlake(policed_lake, "token", "list"))
    assert all(secret not in out for _, out in outputs)
    audit = json.loads(outputs[3][1])
    assert audit["problems"] == []
    assert [e["action"] for e in audit["entries"]][:4] == [
        "policy-change",
        "merge",
        "token-create",
        "token-use",
    ]


@pytest.mark.parametrize("expires", ["30x", "30", "1y", "0d", "400d", ""])
def test_token_create_refuses_a_bad_expires_as_a_usage_error_naming_the_option(
    policed_lake: Path, monkeypatch: pytest.MonkeyPatch, expires: str
) -> None:
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    code, out = flowlake(
        policed_lake, "token", "create", "--name", "ci", "--perimeter", "production",
        "--expires", expires,
    )  # fmt: skip
    assert code == 2, out
    assert "--expires" in out and "lifetime" in out
    assert api.list_tokens(store.open(policed_lake)) == []


@pytest.mark.parametrize("spelling", ["90s", "1.5h"])
def test_token_expires_takes_every_unit_gc_retention_takes(
    policed_lake: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    create_token(
        policed_lake, monkeypatch,
        "token", "create", "--name", "ci", "--perimeter", "production", "--expires", spelling,
    )  # fmt: skip
    retention = CliRunner().invoke(
        app, ["gc", "--retention", spelling, "--lake", str(policed_lake)]
    )
    assert retention.exit_code == 0, retention.output


def test_staging_cannot_create_tokens_from_the_cli(policed_lake: Path) -> None:
    code, out = flowlake(policed_lake, "token", "create", "--name", "x", "--perimeter", "staging")
    assert code != 0 and "needs the production perimeter" in out


def test_the_github_actions_workflow_runs_locally_with_the_token_from_the_environment(
    policed_lake: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The token is made as the workflow's header says: with the least scopes CI needs.
    lines = WORKFLOW.read_text().splitlines()
    (made,) = [line for line in lines if "flowlake token create" in line]
    secret = create_token(policed_lake, monkeypatch, *shlex.split(made.split("flowlake ", 1)[1]))
    lake = store.open(policed_lake, token=secret)
    assert api.identity(lake).scopes == ("promote", "write")
    with pytest.raises(PermissionDeniedError, match="lacks the token scope 'approve'"):
        api.approve(lake, "main")
    pr = lake.branch("team:ml/pr-7")
    pr.write_bytes("models/clf/model.pkl", b"trained on the pull request")
    pr.commit("train")
    lake.close()
    workflow = yaml.safe_load(WORKFLOW.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWLAKE_", "LAKECTL_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        FLOWLAKE_LAKE=str(policed_lake),
        FLOWLAKE_TOKEN=secret,
        FLOWLAKE_USER="runner",
        FLOWLAKE_CACHE_DIR=str(tmp_path / "cache"),
        PR_BRANCH="team:ml/pr-7",
        DEPLOYMENT="pr-7",
        CHECK_COMMAND=f"{sys.executable} -c pass",
    )
    assert set(workflow["env"]) >= {"FLOWLAKE_LAKE", "FLOWLAKE_TOKEN", "PR_BRANCH"}
    logs = []
    for job in ("pull-request", "promote"):
        for step in workflow["jobs"][job]["steps"]:
            if not step.get("name", "").startswith("flowlake"):
                continue
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", step["run"]],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            logs.append(done.stdout + done.stderr)
            assert done.returncode == 0, f"step {step['name']!r} failed:\n{logs[-1]}"
    assert any("check tests on" in log and "passed" in log for log in logs)
    assert any("check_run 'tests': passed" in log for log in logs)
    assert "audit chain intact" in logs[-1]
    assert all(secret not in log for log in logs)
    after = store.open(policed_lake, perimeter="production")
    assert after.read_bytes("models/clf/model.pkl", "main") == b"trained on the pull request"
    head = after.commit("main")
    assert head.metadata["flowlake-policy.principal"] == "token:ci"
    assert secret not in json.dumps(dict(head.metadata))
    after.close()


def test_gates_check_fails_and_names_the_missing_check_run(
    policed_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWLAKE_PERIMETER", "production")
    lake = store.open(policed_lake)
    pr = lake.branch("pr")
    pr.write_bytes("m", b"1")
    pr.commit("change")
    main = lake.resolve("main")
    lake.close()
    code, out = flowlake(policed_lake, "gates", "check", "pr")
    assert code == 1 and "no run tagged check='tests'" in out
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    args = ["check", "tests", "--ref", "pr", "--lake", str(policed_lake), "--", *failing]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3 and "failed" in result.output
    code, out = flowlake(policed_lake, "gates", "check", "pr")
    assert code == 1 and "no finished check run" in out and "failed" in out
    code, out = flowlake(policed_lake, "merge", "pr", "--into", "main")
    assert code != 0 and "refused" in out
    assert store.open(policed_lake, perimeter="production").resolve("main") == main


def test_a_stopped_check_stops_its_command_and_records_the_run_failed(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    store.open(lake_dir).close()
    pid_file = tmp_path / "command.pid"
    sleeper = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    checking = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "check", "tests", "--ref", "main"]
        + ["--lake", str(lake_dir), "--", sys.executable, "-c", sleeper],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and checking.poll() is None
            time.sleep(0.05)
        command_pid = int(pid_file.read_text())
        checking.terminate()  # as a cancelled CI job is stopped
        assert checking.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        checking.kill()
    assert not pid_alive(command_pid)
    lake = store.open(lake_dir)
    (found,) = tracking.search_runs(lake).to_pylist()
    run = tracking.get_run(lake, found["run_id"])
    assert run.status == "failed" and run.error == f"exit {-signal.SIGTERM}"
