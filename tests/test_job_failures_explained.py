"""A job that cannot start says why: at submit when it can, else in its status, log and wait()."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import compute
import store
from compute.backends.local import LocalExecutor
from compute.state import JobStore
from compute.supervise import supervise
from store.errors import NotInstalledError
from ui.cli import app

UV_HINT = r"job environments need uv: pip install 'flowlake\[compute\]'"
HUMANIZE = compute.Environment(pypi={"humanize": "4.9.0"})


def noop() -> None:
    return None


@pytest.fixture
def no_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the ``uv`` package nor a ``uv`` executable on PATH."""
    monkeypatch.setitem(sys.modules, "uv", None)  # `import uv` raises ImportError
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def _job_folders(lake: store.Lake) -> list[Path]:
    root = JobStore.for_location(str(lake.location)).root / "jobs"
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def test_a_job_needing_uv_is_refused_at_submit_with_the_install_hint_and_creates_nothing(
    embedded_lake: store.Lake, no_uv: None
) -> None:
    branches = sorted(b.name for b in embedded_lake.branches())
    with pytest.raises(NotInstalledError, match=UV_HINT):
        compute.submit(noop, lake=embedded_lake, environment=HUMANIZE, output_branch="out")
    assert _job_folders(embedded_lake) == []
    assert sorted(b.name for b in embedded_lake.branches()) == branches


def test_flowlake_run_without_uv_prints_the_install_hint(
    embedded_lake: store.Lake, no_uv: None, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        ["run", "--lake", str(embedded_lake.location), "--pypi", "humanize==4.9.0", "--"]
        + ["python", "-c", "import humanize"],
    )
    assert result.exit_code == 1
    assert "job environments need uv: pip install 'flowlake[compute]'" in result.output


def test_any_error_in_the_supervisor_fails_the_job_with_its_message_everywhere(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job is submitted (uv is there), then its supervisor cannot prepare the environment.
    monkeypatch.setattr(LocalExecutor, "launch", lambda self, folder, spec: None)
    job = compute.submit(noop, lake=embedded_lake, environment=HUMANIZE)

    def no_environment(environment: compute.Environment) -> Path:
        raise NotInstalledError("job environments need uv: pip install 'flowlake[compute]'")

    monkeypatch.setattr("compute.envs.ensure", no_environment)
    folder = JobStore.for_location(str(embedded_lake.location)).folder(job.id)
    final = supervise(str(folder.path), gpus=())

    assert final.status == "failed"
    status = json.loads((folder.path / "status.json").read_text())
    assert status["status"] == "failed"
    assert "pip install 'flowlake[compute]'" in status["error"]
    assert "[flowlake] failed: job environments need uv" in job.logs()
    with pytest.raises(compute.JobFailedError, match=UV_HINT):
        job.wait(timeout=5)
    listed = CliRunner().invoke(app, ["jobs", "--json", "--lake", str(embedded_lake.location)])
    assert listed.exit_code == 0, listed.output
    [row] = [j for j in json.loads(listed.stdout) if j["id"] == job.id]
    assert row["status"] == "failed" and "pip install" in row["error"]
