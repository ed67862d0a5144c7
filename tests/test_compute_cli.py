"""``flowlake run / jobs / logs / cancel``, each a real ``flowlake`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import compute
import store
import tracking

FLOWLAKE = str(Path(sys.executable).with_name("flowlake"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lake with data on main and a project folder with a training script, as the cwd."""
    monkeypatch.setenv("FLOWLAKE_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("FLOWLAKE_GPUS", "0,1")
    lake = store.open(tmp_path / "lake")
    branch = lake.branch("ingest")
    branch.write_bytes("data/x.txt", b"v1")
    branch.commit("data")
    lake.merge(branch.name, into="main")
    lake.close()
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text(
        "import os, sys, time, compute\n"
        "ctx = compute.context()\n"
        "print('read', ctx.lake.read_bytes('data/x.txt').decode(), 'gpus', ctx.gpus)\n"
        "ctx.branch.write_bytes('out/model.txt', sys.argv[1].encode())\n"
        "time.sleep(float(os.environ.get('SLEEP', '0')))\n"
    )
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FLOWLAKE_LAKE", str(tmp_path / "lake"))
    return folder


def flowlake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWLAKE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_run_jobs_logs_and_cancel_round_trip(project: Path) -> None:
    done = flowlake("run", "--gpus", "1", "--branch", "res", "--", "python", "train.py", "m1")
    assert done.returncode == 0, done.stderr
    assert "read v1 gpus (" in done.stdout
    assert "succeeded" in done.stderr and "merged into user:tester/res" in done.stderr
    lake = store.open(project.parent / "lake")
    assert lake.read_bytes("out/model.txt", ref="res") == b"m1"

    detached = flowlake("run", "-d", "--", "python", "train.py", "m2", env={"SLEEP": "60"})
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    job = compute.get_job(lake, job_id[:8])
    deadline = time.monotonic() + 60
    while "read v1" not in job.logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    listed = json.loads(flowlake("jobs", "--json").stdout)
    assert [j["status"] for j in listed] == ["succeeded", "running"]
    assert listed[0]["gpus"] and listed[1]["id"] == job_id
    assert listed[1]["input_commit"] == lake.resolve("main")

    assert flowlake("cancel", job_id).returncode == 0
    followed = flowlake("logs", job_id, "-f")
    # Following a job that ends cancelled exits 1 with the reason, as `run` does (ad7af4a).
    assert followed.returncode == 1 and "read v1" in followed.stdout
    assert "cancelled" in followed.stderr
    assert job.status is compute.JobStatus.CANCELLED

    missing = flowlake("run", "--", "no-such-program-xyz")
    assert missing.returncode == 1 and "command not found: no-such-program-xyz" in missing.stderr


def test_run_json_prints_only_the_json_on_stdout_and_the_job_output_on_stderr(
    project: Path,
) -> None:
    done = flowlake("run", "--json", "--", "python", "train.py", "m3")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["run_id"]
    assert "read v1" in done.stderr


def write_model() -> None:
    compute.context().branch.write_bytes("out/model.txt", b"fn")


def test_a_job_without_a_name_is_named_after_its_callable_or_command(project: Path) -> None:
    lake = store.open(project.parent / "lake")
    by_fn = compute.submit(write_model, lake=lake)
    by_command = compute.submit(command=["python", "train.py", "m4"], lake=lake)
    for job in (by_fn, by_command):
        job.wait(timeout=120)
    assert (by_fn.name, by_command.name) == ("write_model", "python train.py m4")
    named = tracking.sql(lake, "SELECT run_id, name FROM runs").to_pylist()
    assert {r["run_id"]: r["name"] for r in named} == {
        by_fn.run_id: "write_model",
        by_command.run_id: "python train.py m4",
    }
    listed = json.loads(flowlake("jobs", "--json").stdout)
    assert sorted(j["name"] for j in listed) == ["python train.py m4", "write_model"]


def test_jobs_limit_lists_only_the_newest_jobs(project: Path) -> None:
    lake = store.open(project.parent / "lake")
    first = compute.submit(command=["python", "train.py", "a"], lake=lake)
    first.wait(timeout=120)
    second = compute.submit(command=["python", "train.py", "b"], lake=lake)
    second.wait(timeout=120)
    listed = json.loads(flowlake("jobs", "--json", "--limit", "1").stdout)
    assert [j["id"] for j in listed] == [second.id]
    assert [j.id for j in compute.jobs(lake, limit=5)] == [first.id, second.id]
    assert flowlake("jobs", "--limit", "0").returncode == 2


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--pypi", "humanize=="], "requirement 'humanize==' does not parse"),
        (["--pypi", "humanize>=1,,<2"], "requirement 'humanize>=1,,<2' does not parse"),
        (["--backend", "rey"], "unknown compute backend 'rey'"),
        (["--memory", "lots"], "memory 'lots' is not a size"),
        (["--memory", "4"], "memory '4' has no unit: give a size such as '4GiB'"),
        (["--gpus", "-1"], "gpus must be a whole number >= 0"),
    ],
)
def test_a_bad_option_value_of_run_is_a_usage_error_and_creates_nothing(
    project: Path, option: list[str], said: str
) -> None:
    lake = store.open(project.parent / "lake")
    branches = lake.branches(all_namespaces=True)
    done = flowlake(
        "run",
        *option,
        "--branch",
        "new-out",
        "--",
        "python",
        "train.py",
        "x",
        env={"COLUMNS": "300"},
    )
    assert done.returncode == 2, done.stderr
    assert said in " ".join(done.stderr.replace("│", " ").split())
    assert lake.branches(all_namespaces=True) == branches
    assert compute.jobs(lake) == []


def test_run_from_a_subfolder_of_a_git_project_starts_in_that_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = project / "sub"
    sub.mkdir()
    (sub / "train.py").write_text(
        "import os, compute\n"
        "ctx = compute.context()\n"
        "print('cwd', os.path.basename(os.getcwd()), open('params.txt').read())\n"
        "ctx.branch.write_bytes('out/sub.txt', b'from sub')\n"
    )
    (sub / "params.txt").write_text("lr=0.1")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    monkeypatch.chdir(sub)

    done = flowlake("run", "--branch", "sub-res", "--", "python", "train.py")
    assert done.returncode == 0, done.stderr
    assert "cwd sub lr=0.1" in done.stdout
    with store.open(project.parent / "lake") as lake:
        assert lake.read_bytes("out/sub.txt", ref="sub-res") == b"from sub"

    missing = flowlake("run", "--", "python", "nosuch.py")
    assert missing.returncode != 0 and "no file nosuch.py in" in missing.stderr
    assert "Traceback" not in missing.stderr
    (sub / "scratch.py").write_text("print('not kept')\n")
    (project / ".gitignore").write_text("scratch.py\n")
    ignored = flowlake("run", "--", "python", "scratch.py")
    assert ignored.returncode != 0 and "scratch.py is not in the code snapshot" in ignored.stderr
