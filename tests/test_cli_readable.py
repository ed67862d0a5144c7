"""The CLI as a newcomer meets it: clear one-line errors, whole ids, pasteable commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

import compute
import store
import tracking
from compute.backends.local import LocalExecutor
from ui.cli import app


@pytest.mark.parametrize("command", ["status", "install"])
def test_gate_hook_on_an_embedded_lake_says_it_is_not_lakefs_even_without_lakefs_sdk(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open(tmp_path / "lake").close()
    monkeypatch.setitem(sys.modules, "lakefs_sdk", None)  # as if the lakefs extra were missing
    monkeypatch.delitem(sys.modules, "store.backends.lakefs.gatehook", raising=False)
    result = CliRunner().invoke(app, ["gate-hook", command, "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 1
    assert "is not a lakeFS lake" in result.output
    assert "Traceback" not in result.output and "lakefs_sdk" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message, however it wraps


def noop() -> None:
    return None


def test_jobs_at_80_columns_shows_whole_ids_and_times(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LocalExecutor, "launch", lambda self, folder, spec: None)
    jobs = [
        compute.submit(noop, lake=embedded_lake, name=f"a rather long job name number {i}")
        for i in range(2)
    ]
    result = CliRunner().invoke(
        app, ["jobs", "--lake", str(embedded_lake.location)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for job in jobs:
        assert any(job.id[:12] in line for line in lines), result.stdout
        submitted = datetime.fromtimestamp(job.spec.submitted_at, UTC)
        assert any(f"{submitted:%Y-%m-%d %H:%M:%S}" in line for line in lines), result.stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_jobs_at_any_width_cut_no_id_time_or_token_inside_a_word(
    columns: int, embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LocalExecutor, "launch", lambda self, folder, spec: None)
    jobs = [
        compute.submit(noop, lake=embedded_lake, name=f"a rather long job name number {i}")
        for i in range(2)
    ]
    result = CliRunner().invoke(
        app, ["jobs", "--lake", str(embedded_lake.location)], env={"COLUMNS": str(columns)}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    words = {w for line in lines for w in line.split()}
    for i, job in enumerate(jobs):
        submitted = datetime.fromtimestamp(job.spec.submitted_at, UTC)
        whole = [
            job.id[:12],
            f"{submitted:%Y-%m-%d %H:%M:%S}",
            "gpus=0 cpus=1",
            f"{job.spec.input_ref}@{job.spec.input_commit[:12]}",
            "queued",
            "local",
        ]
        assert all(any(part in line for line in lines) for part in whole), result.stdout
        assert set(f"a rather long job name number {i}".split()) <= words, result.stdout
    if columns == 200:  # wide enough: one line per job, every column side by side
        assert sum(jobs[0].id[:12] in line and "gpus=0" in line for line in lines) == 1


def fails_loudly() -> None:
    print("about to fail", flush=True)
    raise RuntimeError("boom")


def test_logs_follow_exits_1_when_the_followed_job_failed_and_0_when_it_succeeded(
    embedded_lake: store.Lake,
) -> None:
    failed = compute.submit(fails_loudly, lake=embedded_lake, name="fails")
    fine = compute.submit(noop, lake=embedded_lake, name="fine")
    where = ["--lake", str(embedded_lake.location)]
    followed = CliRunner().invoke(app, ["logs", failed.id[:12], "-f", *where])
    assert followed.exit_code == 1, followed.output
    assert "about to fail" in followed.stdout
    assert f"job {failed.id[:12]} failed" in followed.stderr and "boom" in followed.stderr
    ok = CliRunner().invoke(app, ["logs", fine.id[:12], "-f", *where])
    assert ok.exit_code == 0, ok.output
    assert CliRunner().invoke(app, ["logs", failed.id[:12], *where]).exit_code == 0  # no -f


def _command_paths(group: Any, ctx: click.Context, prefix: list[str]) -> list[list[str]]:
    paths = [prefix]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):  # a group (typer's is no click.Group)
            paths += _command_paths(command, ctx, [*prefix, name])
        elif command is not None:
            paths.append([*prefix, name])
    return paths


def test_help_shows_no_value_placeholder_after_flags_but_keeps_it_for_options() -> None:
    root = typer.main.get_command(app)
    paths = _command_paths(root, click.Context(root), [])
    assert len(paths) > 20
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.stdout, (path, result.stdout)
    gc_help = CliRunner().invoke(app, ["gc", "--help"], env={"COLUMNS": "120"}).stdout
    assert "<str>" in gc_help  # --retention still says it takes a value


def test_gc_says_how_many_scratch_branches_it_kept_and_why_and_lists_them_whole(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    where = ["--lake", str(lake.location)]
    older = lake.branch("exp-tx-0123456789ab")  # the name form before owners were recorded
    with lake.branch("exp").transact("live") as tx:
        tx.write_bytes("a.txt", b"1")
        default = CliRunner().invoke(app, ["gc", *where])
        assert default.exit_code == 0, default.output
        assert (
            "deleted 0 scratch branches of dead transactions; kept 2 (no owner in its name "
            "(an older flowlake made it): 1, younger than the retention 6h: 1)"
        ) in " ".join(default.stdout.split())
        now = CliRunner().invoke(app, ["gc", "--retention", "0", "--json", *where])
        assert now.exit_code == 0, now.output
        assert json.loads(now.stdout)["scratch_branches_kept"] == {
            older.name: "no owner in its name (an older flowlake made it)",
            tx.name: "its process is alive",
        }
        listed = CliRunner().invoke(
            app, ["branch", "list", "--include-scratch", *where], env={"COLUMNS": "80"}
        )
        assert listed.exit_code == 0, listed.output
        assert any(tx.name.rpartition("/")[2] in line for line in listed.stdout.splitlines())


def test_branch_list_counts_tracking_run_branches_on_one_line_unless_asked(
    embedded_lake: store.Lake,
) -> None:
    import tracking

    lake = embedded_lake
    where = ["--lake", str(lake.location)]
    exp = lake.branch("exp")
    runs = [
        tracking.start_run(lake, branch=exp.name, snapshot_code=False, merge=False)
        for _ in range(3)
    ]
    for run in runs:
        run.end()
    lake.branch("run-notes")  # named like one, but not a run's: listed
    lake.branch("job-0123456789ab")  # the output branch a job names by default: counted
    lake.branch("job-notes")  # named like one, but not a job's default: listed

    def listed(*flags: str) -> click.testing.Result:
        result = CliRunner().invoke(app, ["branch", "list", *flags, *where])
        assert result.exit_code == 0, result.output
        return result

    default = listed().stdout
    assert "exp" in default and "run-notes" in default and "job-notes" in default
    assert not any(run.id in default for run in runs) and "job-0123" not in default
    assert (
        "+ 3 run branches of tracking runs and 1 default output branch of compute jobs "
        "(--runs lists them)"
    ) in " ".join(default.split())
    every = listed("--runs").stdout
    assert all(run.id[:12] in every for run in runs) and "+ 3" not in every
    assert "job-0123456789ab" in every
    names = {b["name"] for b in json.loads(listed("--json").stdout)}
    assert {run.run_branch for run in runs} <= names


@pytest.mark.parametrize(
    "args",
    [["--help"], ["runs", "--help"], ["branch", "list"], ["branch", "list", "--json"]],
    ids=["help", "sub-help", "table", "json"],
)
def test_output_into_a_closed_pipe_ends_quietly_with_141_as_head_would_leave_it(
    tmp_path: Path, args: list[str]
) -> None:
    """``flowlake ... | head -1``: the reader is gone once head has its line. The read end is
    closed before flowlake starts, so every write meets the broken pipe, whatever the timing."""
    store.open(tmp_path / "lake").close()
    flowlake = Path(sys.executable).with_name("flowlake")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(flowlake), *args, *(["--lake", str(tmp_path / "lake")] if "list" in args else [])],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "compacting"])
def test_runs_compact_at_80_columns_keeps_headers_branches_and_commits_whole(
    embedded_lake: store.Lake, dry_run: bool
) -> None:
    branch = embedded_lake.branch("a-rather-long-experiment-branch-name", source="main")
    for name in ("r0", "r1"):
        with tracking.start_run(embedded_lake, branch=branch.name, name=name) as run:
            for step in range(2):
                run.log_metric("loss", 1.0 / (step + 1), step=step)
                run.flush()  # one metric part per flush: something to compact
    where = ["--lake", str(embedded_lake.location)]
    result = CliRunner().invoke(
        app,
        ["runs", "compact", *(["--dry-run"] if dry_run else []), *where],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("branch"))
    expected = ["branch", "runs", "parts", "points", *([] if dry_run else ["commit"])]
    assert header.split() == expected, result.stdout
    names = [b.name for b in embedded_lake.branches() if b.name.rpartition("/")[2] != "main"]
    assert len(names) == 3  # the experiment branch and the two runs' own branches
    for name in names:
        assert any(line.split()[:1] == [name] for line in lines), result.stdout
    if not dry_run:
        head = embedded_lake.get_branch(branch.name).head().id
        assert any(head[:12] in line.split() for line in lines), result.stdout
