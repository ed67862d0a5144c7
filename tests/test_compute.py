"""Compute jobs on the local backend: pinning, atomic outputs, kills, cancel, timeout, retries,
GPU scheduling across submitting processes, and refusing bad input at submit.

Every job here is a real detached supervisor and runner process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import compute
import store
from compute.backends import local_forkserver
from compute.leases import Ledger
from store.errors import (
    AmbiguousNameError,
    InvalidArgumentError,
    InvalidNameError,
    NotInstalledError,
    RefNotFoundError,
)
from store.processes import pid_alive
from tracking import layout

JOB_WAIT_S = 90
#: A job that builds its environment first: a cold uv build resolves, downloads and installs,
#: and under a loaded CI machine that alone can take minutes. A hang guard, not a timing check.
ENV_JOB_WAIT_S = 600


pytestmark = pytest.mark.usefixtures("declared_machine")


def _seed(lake: store.Lake, text: bytes = b"v1") -> str:
    branch = lake.branch("ingest", source="main", exist_ok=True)
    branch.write_bytes("data/x.txt", text)
    branch.commit(f"data {text.decode()}")
    return lake.merge(branch.name, into="main").id


def _git_project(tmp_path: Path) -> Path:
    """A git project with one committed file, train.py."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("LR = 0.1\n")
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for argv in (["init", "-q"], ["add", "train.py"], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *argv], cwd=project, check=True, env=env)
    return project


def _run(lake: store.Lake, run_id: str | None) -> dict:
    """A run's record as the run wrote it on its own branch."""
    assert run_id is not None
    ref = f"{lake.namespace}/{layout.run_branch_short(run_id)}"
    return lake.read_table(layout.run_file(run_id, layout.RUN_FILE), ref=ref).to_pylist()[0]


def _wait_for(predicate, timeout: float = JOB_WAIT_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


# -- job bodies (shipped by value: this module is not importable by its name in a checkout) ----


def read_pinned_after_main_moves(expected_main: str) -> dict[str, str]:
    ctx = compute.context()
    deadline = time.monotonic() + 60
    while ctx.lake.read_bytes("data/x.txt", ref="main").decode() != expected_main:
        if time.monotonic() > deadline:
            raise TimeoutError("main never moved")
        time.sleep(0.05)
    pinned = ctx.lake.read_bytes("data/x.txt").decode()
    print('{"status": "not the protocol"}')  # a job's print must not confuse the runner
    print("\x00\xff garbage", file=sys.stderr)
    ctx.branch.write_bytes("out/seen.txt", pinned.encode())
    ctx.run.log_metric("score", 1.0)
    return {"pinned": pinned, "input_commit": ctx.input_commit, "branch": ctx.output_branch}


def write_half_then_raise() -> None:
    ctx = compute.context()
    ctx.branch.write_bytes("out/half.txt", b"partial")
    print("halfway")
    raise ValueError("boom at half")


def exit_with(code: object) -> None:
    print("working")
    sys.exit(code)


#: ``sys.exit(arg)`` as the command script below and :func:`exit_with` call it.
EXIT_SCRIPT = (
    "import sys\n"
    "arg = sys.argv[1]\n"
    "print('working')\n"
    "sys.exit(None if arg == 'None' else int(arg) if arg.isdigit() else arg)\n"
)


def check_sys_exit_jobs(lake: store.Lake, project: Path, backend: str) -> None:
    """Commands and functions that call ``sys.exit`` end as ``python`` would end: a message
    on stderr (in the job's log, no traceback) and status 1, an int is the status, and 0 or
    None is success for a command; a function must return, so any ``sys.exit`` fails it."""
    (project / "train.py").write_text(EXIT_SCRIPT)
    said = {"bad things": "exited with status 1: bad things", "3": "exited with status 3"}
    jobs = {}
    for arg in ("bad things", "3", "0", "None"):
        jobs["command", arg] = compute.submit(
            command=["python", "train.py", arg], lake=lake, code_dir=project, backend=backend
        )
        code = None if arg == "None" else int(arg) if arg.isdigit() else arg
        jobs["function", arg] = compute.submit(
            exit_with, {"code": code}, lake=lake, code_dir=project, backend=backend
        )
    for (kind, arg), job in jobs.items():
        if kind == "command" and arg in ("0", "None"):
            assert job.wait(timeout=JOB_WAIT_S) is None
            continue
        with pytest.raises(compute.JobFailedError) as failed:
            job.wait(timeout=JOB_WAIT_S)
        if arg in said:
            who = "python train.py " + arg if kind == "command" else "exit_with()"
            assert f"{who} {said[arg]}" in str(failed.value)
        else:
            assert f"exit_with() called sys.exit({arg if arg == 'None' else 0})" in str(
                failed.value
            )
        lines = job.logs().splitlines()
        assert "working" in lines and "Traceback (most recent call last):" not in lines
        assert ("bad things" in lines) == (arg == "bad things")
        assert _run(lake, job.run_id)["status"] == "failed"


def test_jobs_that_call_sys_exit_end_as_python_would(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    check_sys_exit_jobs(embedded_lake, tmp_path, "local")


def open_a_run_then(fail: bool) -> tuple[str, int, str | None]:
    """Start a run of its own and leave it open, then raise (``fail``) or return its id, the
    process the code ran in, and the error its exit hooks were left to see when it started."""
    import tracking
    from tracking import exits

    seen = exits.uncaught()
    run = tracking.start_run(compute.context().lake, name="left-open")
    run.log_metric("loss", 0.5)
    if fail:
        raise RuntimeError(f"failed with run {run.id} open in process {os.getpid()}")
    return run.id, os.getpid(), None if seen is None else repr(seen)


def check_runs_left_open(lake: store.Lake, backend: str, project: Path) -> tuple[int, int]:
    """A run the job's code left open ends as it would in a program: failed, with the error,
    when the code raised; finished when it returned (also in a warm worker that ran a failing
    job just before). Returns the processes the two jobs ran in, failing first.

    ``project`` holds no copy of flowlake (as this repository does), so that the jobs run the
    installed one, as users' jobs do, and a warm worker keeps its modules from job to job."""
    options: dict[str, Any] = {"lake": lake, "backend": backend, "code_dir": project}
    failing = compute.submit(open_a_run_then, {"fail": True}, **options)
    with pytest.raises(compute.JobFailedError, match="failed with run") as failed:
        failing.wait(timeout=JOB_WAIT_S)
    left_open = re.search(r"with run (\w+) open in process (\d+)", str(failed.value))
    assert left_open is not None
    record = _run(lake, left_open.group(1))
    assert record["status"] == "failed"
    assert "RuntimeError: failed with run" in record["error"]
    fine = compute.submit(open_a_run_then, {"fail": False}, **options)
    run_id, pid, seen = fine.wait(timeout=JOB_WAIT_S)
    assert seen is None
    assert _run(lake, run_id)["status"] == "finished"
    return int(left_open.group(2)), pid


def test_a_run_the_jobs_code_left_open_ends_failed_when_the_code_raised(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    check_runs_left_open(embedded_lake, "local", tmp_path)


def write_then_sleep(seconds: float) -> None:
    ctx = compute.context()
    ctx.branch.write_bytes("out/partial.txt", b"partial")
    print("started", flush=True)
    time.sleep(seconds)


def fail_first_attempt() -> int:
    ctx = compute.context()
    if ctx.attempt == 1:
        raise RuntimeError("flaky")
    return ctx.attempt


# -- pinning and atomic outputs -----------------------------------------------------------------


def test_a_job_reads_the_commit_pinned_at_submit_while_main_moves(
    lake: store.Lake, lake_access: object
) -> None:
    v1 = _seed(lake, b"v1")
    job = compute.submit(
        read_pinned_after_main_moves,
        {"expected_main": "v2"},
        lake=lake,
        input_ref="main",
        output_branch="sweep",
        name="pinned",
    )
    _seed(lake, b"v2")
    result = job.wait(timeout=JOB_WAIT_S)
    assert result["pinned"] == "v1"
    assert result["input_commit"] == v1
    assert job.status is compute.JobStatus.SUCCEEDED
    assert lake.read_bytes("out/seen.txt", ref="sweep") == b"v1"
    assert lake.resolve("sweep") == job.output_commit
    run = _run(lake, job.run_id)
    assert run["status"] == "finished" and run["input_commit"] == v1
    assert run["run_branch"] == result["branch"]
    assert '{"status": "not the protocol"}' in job.logs()
    assert lake.exists(f"{layout.run_dir(job.run_id)}/logs/attempt-1.log", ref="sweep")


def test_a_job_that_raises_leaves_its_output_branch_untouched(
    lake: store.Lake, lake_access: object
) -> None:
    _seed(lake)
    before = lake.branch("results", source="main").head().id
    job = compute.submit(write_half_then_raise, lake=lake, output_branch="results")
    with pytest.raises(compute.JobFailedError, match="boom at half") as err:
        job.wait(timeout=JOB_WAIT_S)
    assert "Traceback" in (err.value.remote_traceback or "")
    assert job.status is compute.JobStatus.FAILED
    assert lake.resolve("results") == before
    run = _run(lake, job.run_id)
    assert run["status"] == "failed" and "boom at half" in (run["error"] or "")
    assert lake.read_bytes("out/half.txt", ref=run["run_branch"]) == b"partial"
    log = lake.read_bytes(f"{layout.run_dir(job.run_id)}/logs/attempt-1.log", ref=run["run_branch"])
    assert b"halfway" in log


def test_a_sigkilled_job_shows_killed_merges_nothing_and_frees_its_lease(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    _seed(lake)
    before = lake.branch("results", source="main").head().id
    job = compute.submit(
        write_then_sleep,
        {"seconds": 60},
        lake=lake,
        output_branch="results",
        resources=compute.Resources(gpus=1),
    )
    _wait_for(lambda: "started" in job.logs())
    assert len(Ledger().held()) == 1
    os.kill(job.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(compute.JobFailedError, match="killed"):
        job.wait(timeout=JOB_WAIT_S)
    assert job.status is compute.JobStatus.KILLED
    assert lake.resolve("results") == before
    assert Ledger().held() == []
    run = _run(lake, job.run_id)
    assert run["status"] == "killed"
    assert lake.read_bytes("out/partial.txt", ref=run["run_branch"]) == b"partial"

    # A SIGKILLed supervisor takes its job with it and its lease is dropped all the same.
    second = compute.submit(
        write_then_sleep, {"seconds": 60}, lake=lake, resources=compute.Resources(gpus=4)
    )
    _wait_for(lambda: "started" in second.logs())
    runner = second.pid
    os.kill(second.record().pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(compute.JobFailedError, match="killed"):
        second.wait(timeout=JOB_WAIT_S)
    _wait_for(lambda: not pid_alive(runner))  # type: ignore[arg-type]
    assert Ledger().held() == []
    assert lake.resolve("results") == before


def test_cancel_stops_a_running_job_and_a_queued_one(embedded_lake: store.Lake) -> None:
    lake = embedded_lake
    _seed(lake)
    four = compute.Resources(gpus=4)
    running = compute.submit(write_then_sleep, {"seconds": 60}, lake=lake, resources=four)
    _wait_for(lambda: "started" in running.logs())
    queued = compute.submit(write_then_sleep, {"seconds": 60}, lake=lake, resources=four)
    time.sleep(0.3)
    assert queued.status is compute.JobStatus.QUEUED
    queued.cancel()
    running.cancel()
    for job in (running, queued):
        with pytest.raises(compute.JobFailedError, match="cancelled"):
            job.wait(timeout=JOB_WAIT_S)
        assert job.status is compute.JobStatus.CANCELLED
    assert _run(lake, running.run_id)["status"] == "killed"
    assert queued.run_id is None
    assert Ledger().held() == []


def sleep_quietly(seconds: float) -> None:
    print("sleeping", flush=True)
    time.sleep(seconds)


def test_a_job_past_its_timeout_fails_and_is_recorded_though_it_never_used_its_run(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    _seed(lake)
    # 4 s: room for the job's first line on a loaded CI machine before the timeout ends it.
    job = compute.submit(sleep_quietly, {"seconds": 60}, lake=lake, timeout=4)
    with pytest.raises(compute.JobFailedError, match="timed out after 4 s") as failed:
        job.wait(timeout=JOB_WAIT_S)
    # What it printed, labelled as such: it raised nothing.
    assert "end of the job's log:\nsleeping" in str(failed.value)
    assert "traceback" not in str(failed.value)
    assert job.status is compute.JobStatus.FAILED
    run = _run(lake, job.run_id)
    assert run["status"] == "failed" and "timed out" in (run["error"] or "")
    log = lake.read_bytes(f"{layout.run_dir(job.run_id)}/logs/attempt-1.log", ref=run["run_branch"])
    assert b"sleeping" in log


def leaves_a_thread_and_an_atexit_hook(out: str) -> None:
    import atexit
    import threading

    def late() -> None:
        time.sleep(0.5)
        with open(out, "a") as f:
            f.write("thread\n")

    def at_exit() -> None:
        with open(out, "a") as f:
            f.write("atexit\n")

    threading.Thread(target=late).start()
    atexit.register(at_exit)


def test_a_job_ends_as_an_interpreter_does_its_threads_finish_then_atexit_runs(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    out = tmp_path / "exit.txt"
    job = compute.submit(leaves_a_thread_and_an_atexit_hook, {"out": str(out)}, lake=embedded_lake)
    job.wait(timeout=JOB_WAIT_S)
    assert out.read_text() == "thread\natexit\n"


def returns_before_asking_for_its_run() -> str:
    print("working", flush=True)
    return "done"


def test_a_job_that_never_asks_for_its_run_is_still_recorded_and_merged(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    _seed(lake)
    job = compute.submit(returns_before_asking_for_its_run, lake=lake, output_branch="quiet")
    assert job.wait(timeout=JOB_WAIT_S) == "done"
    run = _run(lake, job.run_id)
    assert run["status"] == "finished"
    assert job.output_commit == lake.resolve("quiet")
    log = lake.read_bytes(f"{layout.run_dir(job.run_id)}/logs/attempt-1.log", ref="quiet")
    assert b"working" in log


def waits_for_file(path: str) -> str:
    print("waiting", flush=True)
    while not os.path.exists(path):
        time.sleep(0.02)
    return "done"


def test_a_new_output_branch_is_created_by_the_attempt_when_it_opens_the_lake(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    """Creating the output branch (a durable commit) is off the way to the job's first line:
    the attempt creates it at the pinned input commit when it first opens the lake."""
    lake = embedded_lake
    v1 = _seed(lake)
    go = tmp_path / "go"
    job = compute.submit(waits_for_file, {"path": str(go)}, lake=lake, output_branch="late")
    _wait_for(lambda: "waiting" in job.logs())
    assert "late" not in {b.name.rsplit("/", 1)[-1] for b in lake.branches()}
    assert [j.id for j in compute.jobs(lake)] == [job.id]  # listed at once all the same
    _seed(lake, b"v2")  # main moves on: the branch still starts at the pinned commit
    go.touch()
    assert job.wait(timeout=JOB_WAIT_S) == "done"
    assert lake.resolve("late") == job.output_commit
    assert v1 in {c.id for c in lake.log("late")}
    assert lake.read_bytes("data/x.txt", ref="late") == b"v1"


def test_jobs_of_a_sweep_racing_to_create_one_new_output_branch_all_merge_into_it(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    _seed(lake)
    jobs = compute.map(
        returns_before_asking_for_its_run, [{}, {}, {}], lake=lake, output_branch="swept"
    )
    assert [job.wait(timeout=JOB_WAIT_S) for job in jobs] == ["done"] * 3
    merges = {job.output_commit for job in jobs}
    assert len(merges) == 3 and lake.resolve("swept") in merges
    assert merges <= {c.id for c in lake.log("swept")}


def test_a_sweep_pins_one_commit_for_all_its_jobs_while_main_moves(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = embedded_lake
    v1 = _seed(lake)
    resolve = lake.resolve
    moving = []

    def resolve_then_main_moves(ref: str) -> str:
        found = resolve(ref)
        if not moving:  # another writer moves main after each resolve, mid-sweep
            moving.append(found)
            _seed(lake, f"moved after {found[:8]}".encode())
            moving.clear()
        return found

    monkeypatch.setattr(lake, "resolve", resolve_then_main_moves)
    jobs = compute.map(returns_before_asking_for_its_run, [{}, {}, {}], lake=lake)
    monkeypatch.undo()
    assert {job.spec.input_commit for job in jobs} == {v1}
    assert [job.wait(timeout=JOB_WAIT_S) for job in jobs] == ["done"] * 3


def takes_anything(**kwargs: object) -> int:
    return len(kwargs)


def test_a_sweep_with_one_bad_item_launches_none_of_its_jobs(embedded_lake: store.Lake) -> None:
    import threading

    _seed(embedded_lake)
    items = [{}, {"lock": threading.Lock()}, {}]
    with pytest.raises(
        InvalidArgumentError, match=r"^item 2 of the sweep: argument 'lock' \(lock\) cannot be"
    ):
        compute.map(takes_anything, items, lake=embedded_lake)
    with pytest.raises(InvalidArgumentError, match="^item 3 of the sweep: each item is a dict"):
        compute.map(takes_anything, [{}, {}, 7], lake=embedded_lake)
    with pytest.raises(
        InvalidArgumentError, match=r"^item 2 of the sweep: returns_before_asking_for_its_run\(\)"
    ):
        compute.map(returns_before_asking_for_its_run, [{}, {"lr": 1}], lake=embedded_lake)
    assert compute.jobs(embedded_lake) == []


def test_ensure_output_branch_uses_a_branch_made_meanwhile_and_creates_a_missing_one(
    embedded_lake: store.Lake,
) -> None:
    from compute.runner import ensure_output_branch

    lake = embedded_lake
    v1 = _seed(lake)
    spec = compute.model.JobSpec(
        job_id="0" * 32,
        name=None,
        backend="local",
        lake_location=str(lake.location),
        namespace=lake.namespace,
        user=lake.user,
        input_ref="main",
        input_commit=v1,
        output_branch=f"{lake.namespace}/made",
        kind="callable",
        command=(),
        code_snapshot="x",
        resources=compute.Resources(),
        environment=compute.Environment(),
        retries=0,
        timeout=None,
        submitted_at=0.0,
        submitter_python=sys.executable,
    )
    ensure_output_branch(lake, spec)
    assert lake.resolve("made") == v1
    other = lake.branch("made2", source="main")
    other.write_bytes("y", b"1")
    moved = other.commit("moved").id
    ensure_output_branch(lake, replace(spec, output_branch=f"{lake.namespace}/made2"))
    assert lake.resolve("made2") == moved  # an existing branch is used as it is


def test_a_failed_attempt_is_retried_as_a_new_run(embedded_lake: store.Lake) -> None:
    _seed(embedded_lake)
    job = compute.submit(fail_first_attempt, lake=embedded_lake, retries=1, output_branch="r")
    assert job.wait(timeout=JOB_WAIT_S) == 2
    assert "attempt 1 failed; retrying" in job.logs()
    run_ids = [b.name.rsplit("/run-", 1)[1] for b in embedded_lake.branches() if "/run-" in b.name]
    statuses = sorted(_run(embedded_lake, run_id)["status"] for run_id in run_ids)
    assert statuses == ["failed", "finished"]


# -- code: callables and commands ---------------------------------------------------------------


def test_commands_and_outside_modules_run_the_code_as_it_was_at_submit(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = embedded_lake
    _seed(lake)
    project = tmp_path / "project"
    project.mkdir()
    script = project / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, compute
            ctx = compute.context()
            ctx.branch.write_bytes("out/version.txt", b"one " + sys.argv[1].encode())
            print("trained")
            """
        )
    )
    job = compute.submit(
        command=["python", "train.py", "lr=0.1"], lake=lake, code_dir=project, output_branch="c"
    )
    script.write_text("raise SystemExit('the work tree changed after submit')\n")
    assert job.wait(timeout=JOB_WAIT_S) is None
    assert lake.read_bytes("out/version.txt", ref="c") == b"one lr=0.1"

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "helpers_outside.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(outside))
    import helpers_outside  # type: ignore[import-not-found]

    job = compute.submit(helpers_outside.double, {"x": 21}, lake=lake, code_dir=project)
    assert job.wait(timeout=JOB_WAIT_S) == 42

    failing = compute.submit(command=["false"], lake=lake, code_dir=project)
    with pytest.raises(compute.JobFailedError, match="exited with status 1"):
        failing.wait(timeout=JOB_WAIT_S)


_FAILING_SCRIPT = textwrap.dedent(
    """
    import sys, compute, store

    class Model:
        def fit(self, lr):
            check(lr)

    def check(lr):
        if lr > 1:
            raise ValueError(f"lr {lr} is too large")

    def train(lr):
        Model().fit(lr)

    if __name__ == "__main__":
        job = compute.submit(train, {"lr": 2}, lake=store.open(sys.argv[1]))
        try:
            job.wait(timeout=90)
        except compute.JobFailedError as exc:
            print(exc.remote_traceback)
    """
)


def test_a_failed_jobs_traceback_points_at_the_users_script_lines_not_at_flowlake(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(_FAILING_SCRIPT)
    done = subprocess.run(
        [sys.executable, "train.py", str(embedded_lake.location)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))),
    )
    assert done.returncode == 0, done.stderr
    shown = done.stdout
    # Functions of __main__ travel by value; their frames still name the script and its lines.
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', shown)
    assert [(Path(f).name, int(n), fn) for f, n, fn in frames] == [
        ("train.py", 13, "train"),
        ("train.py", 6, "fit"),
        ("train.py", 10, "check"),
    ], shown
    assert 'raise ValueError(f"lr {lr} is too large")' in shown  # the source line, too
    assert "ValueError: lr 2 is too large" in shown


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_each_submit_snapshots_the_git_work_tree_as_it_is_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compute.code import load_snapshot, take_snapshot

    # The submitter caches git status (tracking.localcache): a later change must still show.
    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(tmp_path / "cache"))
    project = _git_project(tmp_path)
    root = tmp_path / "state"
    root.mkdir()
    old = time.time() - 3600

    def settle(*paths: Path) -> None:  # older than the racy window, so the cache is used
        for i, path in enumerate(paths):
            os.utime(path, (old + i, old + i))

    settle(project / "train.py", project / ".git" / "index")

    def snap() -> tuple[str, bool | None, bytes]:
        sid, _ = take_snapshot(root, project)
        code, checkout = load_snapshot(root, sid)
        return sid, code.git_dirty, (checkout / "train.py").read_bytes()

    clean = snap()
    assert clean[1:] == (False, b"LR = 0.1\n")
    # git status refreshed its index (settle changed train.py's ctime): settle the index
    # again, after train.py. Not train.py: git compares ctime to the second, so a utime in
    # another second than the last one would make git status rewrite its index, and the
    # answer would rightly not be cached.
    os.utime(project / ".git" / "index", (old + 1, old + 1))
    assert snap() == clean  # nothing changed: the same checkout
    assert list((tmp_path / "cache").rglob("git-status/*.json"))  # and git status was cached
    (project / "train.py").write_text("LR = 0.2\n")  # the same size
    dirty = snap()
    assert dirty[1:] == (True, b"LR = 0.2\n") and dirty[0] != clean[0]
    settle(project / ".git" / "index", project / "train.py")  # settled, at another time
    assert snap() == dirty
    (project / "train.py").write_text("LR = 0.1\n")
    assert snap() == clean


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_an_unchanged_project_is_not_read_again_and_a_missing_checkout_is_made_from_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit lists files the cache vouches for without their bytes when the last checkout
    holds them; a checkout that is gone is written again from the work tree's bytes."""
    from compute.code import PendingSnapshot
    from tracking import snapshot

    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", str(tmp_path / "cache"))
    project = _git_project(tmp_path)
    old = time.time() - 3600
    for i, path in enumerate((project / "train.py", project / ".git" / "index")):
        os.utime(path, (old + i, old + i))  # older than the racy window: the cache is used
    unread: list[list[str]] = []
    finish = snapshot.PendingListing.finish

    def spy(self: snapshot.PendingListing, **kwargs: Any) -> snapshot.CodeListing:
        listed = finish(self, **kwargs)
        unread.append([f.path for f in listed.files if f.data is None])
        return listed

    monkeypatch.setattr(snapshot.PendingListing, "finish", spy)
    root = tmp_path / "state"
    for _ in range(2):  # the first submit reads the file; the cache settles after it
        sid, checkout = PendingSnapshot(project).finish(root)
    unread.clear()
    assert PendingSnapshot(project).finish(root) == (sid, checkout)
    assert unread == [["train.py"]]
    shutil.rmtree(root / sid)
    unread.clear()
    assert PendingSnapshot(project).finish(root) == (sid, checkout)
    assert unread == [["train.py"], []]  # listed again, every file read
    assert (checkout / "train.py").read_text() == "LR = 0.1\n"


# -- bad input ----------------------------------------------------------------------------------


def test_a_job_spec_round_trips_through_its_json() -> None:
    import dataclasses

    spec = compute.model.JobSpec(
        job_id="0" * 32,
        name="n",
        backend="ray",
        lake_location="/lake",
        namespace="user:a",
        user="a",
        input_ref="main",
        input_commit="c" * 64,
        output_branch="user:a/o",
        kind="command",
        command=("python", "x.py"),
        code_snapshot="s",
        resources=compute.Resources(gpus=1, cpus=2, memory="4GiB"),
        environment=compute.Environment(
            pypi={"humanize": "4.9.0"},
            index_url="https://pypi.example/simple",
            extra_index_urls=("https://more.example/simple",),
        ),
        retries=2,
        timeout=5.0,
        submitted_at=1.5,
        submitter_python=sys.executable,
        perimeter="staging",
        principal="user:a",
    )
    as_dict = dataclasses.asdict(spec)
    as_dict["command"] = list(spec.command)
    assert json.loads(spec.to_json()) == json.loads(json.dumps(as_dict))
    assert compute.model.JobSpec.from_json(spec.to_json()) == spec


def test_a_new_output_branch_named_like_a_tag_or_production_is_refused_at_submit(
    lake: store.Lake,
) -> None:
    """The attempt creates a new output branch; what would refuse creating it is checked at
    submit, so the job is refused there and nothing is created."""
    _seed(lake)
    lake.tag("release", "main")
    branches = lake.branches(all_namespaces=True)
    for name, message in (("release", "release"), ("main", "main")):
        with pytest.raises(AmbiguousNameError, match=message):
            compute.submit(fail_first_attempt, lake=lake, output_branch=f"{lake.namespace}/{name}")
    assert lake.branches(all_namespaces=True) == branches
    assert compute.jobs(lake) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backend": "slurm"}, InvalidArgumentError, "unknown compute backend 'slurm'"),
        ({"resources": "gpus"}, InvalidArgumentError, "compute.Resources"),
        ({"input_ref": "no-such-ref"}, RefNotFoundError, "no-such-ref"),
        ({"args": {"lock": __import__("threading").Lock()}}, InvalidArgumentError, "'lock'"),
        ({"retries": -1}, InvalidArgumentError, "retries"),
        ({"timeout": 0}, InvalidArgumentError, "timeout"),
        ({"fn": None, "command": ["no-such-program-xyz"]}, InvalidArgumentError, "not found"),
        ({"fn": None, "command": ["python", "missing.py"]}, InvalidArgumentError, "not found"),
        ({"resources": compute.Resources(gpus=5)}, compute.ResourceError, "has 4 GPU"),
        ({"output_branch": "bad name"}, InvalidNameError, "bad name"),
        ({"code_dir": "/no/such/project"}, InvalidArgumentError, "/no/such/project does not"),
        ({"code_dir": __file__}, InvalidArgumentError, "is not a folder"),
        ({"code_dir": 3}, InvalidArgumentError, "code_dir must be a folder's path"),
        ({"output_branch": ""}, InvalidArgumentError, "output_branch must be a branch name"),
        ({"name": ""}, InvalidArgumentError, "name must be a non-empty string"),
        ({"name": "a\x1b[2Jb"}, InvalidArgumentError, "without control characters"),
        ({"args": {"lr": 0.1}}, InvalidArgumentError, r"fail_first_attempt\(\) cannot take"),
        ({"fn": sleep_quietly}, InvalidArgumentError, "missing a required argument: 'seconds'"),
        ({"backend": ["local"]}, InvalidArgumentError, "unknown compute backend"),
        ({"fn": None, "command": [""]}, InvalidArgumentError, "names no program"),
        ({"timeout": float("nan")}, InvalidArgumentError, "timeout"),
    ],
)
def test_bad_input_is_refused_at_submit_and_creates_nothing(
    embedded_lake: store.Lake, kwargs: dict, error: type, message: str
) -> None:
    _seed(embedded_lake)
    branches = embedded_lake.branches(all_namespaces=True)
    options = {"fn": fail_first_attempt, "output_branch": "o", **kwargs}
    with pytest.raises(error, match=message):
        compute.submit(options.pop("fn"), lake=embedded_lake, **options)
    assert embedded_lake.branches(all_namespaces=True) == branches
    assert compute.jobs(embedded_lake) == []


def keep_a_checkpoint(value: str) -> tuple[bool, str, bool]:
    """Whether a checkpoint was in the working folder already, what it holds once written,
    and whether the project's code is there to read."""
    there = os.path.exists("ckpt.txt")
    with open("ckpt.txt", "a") as f:
        f.write(value)
    time.sleep(0.5)  # jobs of a sweep write at once
    with open("ckpt.txt") as f:
        return there, f.read(), os.path.isfile("train.py")


def test_what_a_job_writes_to_its_working_folder_no_other_job_sees(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    (tmp_path / "train.py").write_text("X = 1\n")
    options: dict[str, Any] = {"lake": embedded_lake, "code_dir": tmp_path}
    first = compute.submit(keep_a_checkpoint, {"value": "a"}, **options)
    assert first.wait(timeout=JOB_WAIT_S) == (False, "a", True)
    sweep = compute.map(keep_a_checkpoint, [{"value": "b"}, {"value": "c"}], **options)
    assert [job.wait(timeout=JOB_WAIT_S) for job in sweep] == [
        (False, "b", True),
        (False, "c", True),
    ]
    assert not (tmp_path / "ckpt.txt").exists()


def open_lakes_as_a_script_would() -> tuple[str, str]:
    """What ``store.open()`` opens in a job, and what a relative path says (shipped by value,
    naming the ``store`` package: pickled as a reference to it)."""
    opened = store.open()
    try:
        store.open("./lake")
    except InvalidArgumentError as exc:
        refused = str(exc)
    else:
        refused = "opened"
    return opened.location, refused


def test_a_job_opens_its_own_lake_by_default_and_never_creates_one_in_its_folder(
    embedded_lake: store.Lake,
) -> None:
    _seed(embedded_lake)
    job = compute.submit(open_lakes_as_a_script_would, lake=embedded_lake)
    location, refused = job.wait(timeout=JOB_WAIT_S)
    assert os.path.realpath(location) == os.path.realpath(embedded_lake.location)
    assert "runs in a working folder of its own" in refused


def test_what_is_not_a_lake_or_a_sweep_is_refused_naming_it(embedded_lake: store.Lake) -> None:
    with pytest.raises(InvalidArgumentError, match="lake must be a store.Lake"):
        compute.submit(fail_first_attempt, lake="./lake")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="lake must be a store.Lake"):
        compute.jobs(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="iterable of argument dicts"):
        compute.map(sleep_quietly, None, lake=embedded_lake)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="iterable of argument dicts"):
        compute.map(sleep_quietly, {"seconds": 1}, lake=embedded_lake)  # type: ignore[arg-type]
    assert compute.jobs(embedded_lake) == []


def test_a_script_that_is_there_but_not_executable_is_named_so(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(InvalidArgumentError, match="run.sh is not executable"):
        compute.submit(command=["./run.sh"], lake=embedded_lake, code_dir=tmp_path)
    assert compute.jobs(embedded_lake) == []


def test_numbers_of_other_types_are_taken_for_timeout_and_retries(
    embedded_lake: store.Lake,
) -> None:
    numpy = pytest.importorskip("numpy")
    _seed(embedded_lake)
    job = compute.submit(
        fail_first_attempt,
        lake=embedded_lake,
        timeout=numpy.float32(60),
        retries=numpy.int64(1),
    )
    assert job.wait(timeout=JOB_WAIT_S) == 2  # failed once, retried


@pytest.mark.parametrize(
    "kwargs",
    [{"gpus": -1}, {"cpus": -0.5}, {"memory": "-4GiB"}, {"memory": "4 potatoes"}, {"memory": "4"}],
)
def test_negative_or_malformed_resources_are_refused(kwargs: dict) -> None:
    with pytest.raises(compute.ResourceError):
        compute.Resources(**kwargs)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("==", "'humanize=='"),
        ("=1", "'humanize=1'"),
        ("~=1", "'humanize~=1'"),
        (">=1,,<2", "'humanize>=1,,<2'"),
        ("<=1.*", "'humanize<=1.*'"),
        ("1.*.2", "'humanize==1.*.2'"),
    ],
)
def test_a_version_spec_that_does_not_parse_is_refused_naming_the_requirement(
    spec: str, named: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"requirement {re.escape(named)} does not"):
        compute.Environment(pypi={"humanize": spec})


def test_a_job_recorded_with_a_spec_refused_since_still_loads() -> None:
    recorded = {
        "pypi": {"humanize": "=="},
        "index_url": None,
        "extra_index_urls": [],
        "image": None,
    }
    env = compute.Environment.as_recorded(recorded)
    assert env.pypi == {"humanize": "=="} and env.requirements() == ["humanize=="]
    good = compute.Environment.as_recorded({"pypi": {"humanize": "4.9.0"}})
    assert good == compute.Environment(pypi={"humanize": "4.9.0"})


def test_context_outside_a_job_says_so() -> None:
    with pytest.raises(compute.NotInJobError, match="only inside a job"):
        compute.context()


#: Modules a job must not wait for before its first line: the store's (pyarrow, numpy, the lake)
#: and tracking's (DuckDB) are loaded when the code asks for ``ctx.lake`` or ``ctx.run``.
HEAVY_MODULES = ("pyarrow", "numpy", "duckdb", "tracking", "store.lake", "cloudpickle")


def test_a_jobs_supervisor_and_runner_import_neither_the_store_nor_tracking() -> None:
    probe = (
        "import sys, compute, compute.supervise, compute.runner, compute.inside;"
        f"print(sorted(set({HEAVY_MODULES!r}) & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def modules_loaded_at_first_line(names: tuple[str, ...]) -> list[str]:
    return sorted(set(names) & set(sys.modules))


def test_a_jobs_code_starts_before_the_store_is_loaded_and_still_reaches_the_lake(
    embedded_lake: store.Lake,
) -> None:
    _seed(embedded_lake)
    job = compute.submit(
        modules_loaded_at_first_line,
        {"names": tuple(m for m in HEAVY_MODULES if m != "cloudpickle")},
        lake=embedded_lake,
        output_branch="light",
    )
    # This callable is shipped by value, which needs cloudpickle to load: that one is the
    # job's own cost. The rest arrives only with the lake, which the runner opens afterwards.
    assert job.wait(timeout=JOB_WAIT_S) == []
    assert job.status is compute.JobStatus.SUCCEEDED
    assert embedded_lake.get_branch("light").head().id == job.output_commit


def returns_one() -> int:
    return 1


def supervisor_parent_and_mark() -> tuple[int, str | None, int]:
    with open(f"/proc/{os.getppid()}/stat") as f:  # the runner's parent is its supervisor
        supervisor_parent = int(f.read().rsplit(")", 1)[1].split()[1])
    mask = os.umask(0)
    os.umask(mask)
    return supervisor_parent, os.environ.get("FLOWLAKE_TEST_MARK"), mask


def _server_answers() -> bool:
    folder = local_forkserver.socket_dir()
    assert folder is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(folder / f"{local_forkserver.server_key()}.sock"))
        except OSError:
            return False
    return True


def test_a_supervisor_from_the_fork_server_takes_the_submitters_environment_and_umask(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(embedded_lake)
    compute.submit(returns_one, lake=embedded_lake).wait(timeout=JOB_WAIT_S)  # starts a server
    _wait_for(_server_answers)
    # Set after the server started: the job must see the submitter's values as of the submit.
    monkeypatch.setenv("FLOWLAKE_TEST_MARK", "as-at-submit")
    old = os.umask(0o027)
    try:
        job = compute.submit(supervisor_parent_and_mark, lake=embedded_lake)
    finally:
        os.umask(old)
    parent, mark, mask = job.wait(timeout=JOB_WAIT_S)
    assert job._handle is None  # started through the server, not as this process's child
    assert parent != os.getpid()
    assert (mark, mask) == ("as-at-submit", 0o027)


def test_with_the_fork_server_turned_off_the_supervisor_is_a_fresh_interpreter(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(embedded_lake)
    monkeypatch.setenv("FLOWLAKE_FORKSERVER", "0")
    job = compute.submit(supervisor_parent_and_mark, lake=embedded_lake)
    parent, _, _ = job.wait(timeout=JOB_WAIT_S)
    assert parent == os.getpid()
    assert job._handle is not None


# -- GPU scheduling across submitting processes -------------------------------------------------

SUBMITTER = """
import json, os, sys, time
import compute, store

def occupy(out):
    ctx = compute.context()
    start = time.time()
    time.sleep(1.5)
    with open(os.path.join(out, ctx.job_id + ".json"), "w") as f:
        json.dump({"start": start, "end": time.time(),
                   "visible": os.environ["CUDA_VISIBLE_DEVICES"], "gpus": list(ctx.gpus)}, f)

lake = store.open(sys.argv[1])
jobs = compute.map(occupy, [{"out": sys.argv[2]}] * 3, lake=lake,
                   resources=compute.Resources(gpus=1, cpus=1))
for job in jobs:
    job.wait(timeout=120)
"""


def test_six_one_gpu_jobs_from_two_processes_never_share_or_oversubscribe_gpus(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    out = tmp_path / "spans"
    out.mkdir()
    script = tmp_path / "submitter.py"
    script.write_text(SUBMITTER)
    procs = [
        subprocess.Popen([sys.executable, str(script), embedded_lake.location, str(out)])
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=180) == 0
    spans = [json.loads(p.read_text()) for p in out.iterdir()]
    assert len(spans) == 6
    for span in spans:
        assert span["visible"] == str(span["gpus"][0]) and len(span["gpus"]) == 1
    events = sorted(
        [(s["start"], 1, s) for s in spans] + [(s["end"], -1, s) for s in spans],
        key=lambda e: (e[0], e[1]),
    )
    busy: list[dict] = []
    for _, kind, span in events:
        if kind == 1:
            assert span["visible"] not in {b["visible"] for b in busy}
            busy.append(span)
            assert len(busy) <= 4
        else:
            busy.remove(span)
    assert len(compute.jobs(embedded_lake)) == 6
    assert Ledger().held() == []


@pytest.mark.gpu
def test_a_gpu_job_gets_its_own_device_and_runs_a_cuda_op(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWLAKE_GPUS")
    from compute.machine import detect_gpus

    if not detect_gpus():
        pytest.skip("no GPU on this machine (NVML and nvidia-smi find none)")
    torch = pytest.importorskip("torch", reason="the CUDA op needs torch")
    del torch

    def cuda_sum() -> dict:
        import os

        import torch

        x = torch.arange(10, device="cuda", dtype=torch.float32)
        return {"sum": float((x * 2).sum().item()), "visible": os.environ["CUDA_VISIBLE_DEVICES"]}

    _seed(embedded_lake)
    job = compute.submit(cuda_sum, lake=embedded_lake, resources=compute.Resources(gpus=1))
    result = job.wait(timeout=JOB_WAIT_S)
    assert result["sum"] == 90.0
    assert result["visible"] == str(job.gpus[0])


# -- environments -------------------------------------------------------------------------------


def humanize_version() -> dict[str, str]:
    import humanize  # type: ignore[import-not-found]

    return {"version": humanize.__version__, "python": sys.executable}


def test_a_job_runs_in_a_cached_uv_environment_that_records_its_versions(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uv", reason="job environments need the compute extra")
    with pytest.raises(ImportError):
        import humanize  # noqa: F401  # the submitter must not have it
    monkeypatch.setenv("FLOWLAKE_ENV_CACHE", str(tmp_path / "envs"))
    lake = embedded_lake
    _seed(lake)
    env = compute.Environment(pypi={"humanize": "4.9.0"})
    first = compute.submit(humanize_version, lake=lake, environment=env)
    cold = first.wait(timeout=ENV_JOB_WAIT_S)
    second = compute.submit(humanize_version, lake=lake, environment=env)
    warm = second.wait(timeout=ENV_JOB_WAIT_S)
    assert cold["version"] == warm["version"] == "4.9.0"
    assert cold["python"] == warm["python"] != sys.executable
    assert len([p for p in (tmp_path / "envs").iterdir() if p.is_dir()]) == 1
    ref = f"{lake.namespace}/{layout.run_branch_short(second.run_id)}"  # type: ignore[arg-type]
    packages = lake.read_table(
        layout.run_file(second.run_id, layout.ENVIRONMENT_FILE),
        ref=ref,  # type: ignore[arg-type]
    ).to_pylist()
    assert {"name": "humanize", "version": "4.9.0"} in [
        {"name": p["name"], "version": p["version"]} for p in packages
    ]

    bad = compute.submit(
        humanize_version, lake=lake, environment=compute.Environment(pypi={"humanize": "999.0"})
    )
    with pytest.raises(compute.JobFailedError, match="No solution found") as err:
        bad.wait(timeout=ENV_JOB_WAIT_S)
    assert err.value.status == "failed" and bad.run_id is None


def test_the_job_spec_round_trips_and_refuses_another_version() -> None:
    spec = compute.JobSpec(
        job_id="a" * 32,
        name="n",
        backend="local",
        lake_location="/lake",
        namespace="user:tester",
        user="tester",
        input_ref="main",
        input_commit="c" * 64,
        output_branch="user:tester/o",
        kind="command",
        command=("python", "train.py"),
        code_snapshot="s" * 32,
        resources=compute.Resources(gpus=1, cpus=2, memory="1GiB"),
        environment=compute.Environment(pypi={"humanize": "4.9.0"}),
        retries=1,
        timeout=10.0,
        submitted_at=1.0,
        submitter_python=sys.executable,
    )
    assert compute.JobSpec.from_json(spec.to_json()) == spec
    assert spec.resources.memory_bytes == 1024**3
    assert spec.environment.requirements() == ["humanize==4.9.0"]
    future = json.loads(spec.to_json()) | {"version": 99}
    with pytest.raises(InvalidArgumentError, match="version 99"):
        compute.JobSpec.from_json(json.dumps(future))


def test_a_backend_whose_extra_is_missing_names_the_extra(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    monkeypatch.delitem(sys.modules, "compute.backends.ray", raising=False)
    with pytest.raises(NotInstalledError, match=r"pip install 'flowlake\[ray\]'"):
        compute.submit(fail_first_attempt, lake=embedded_lake, backend="ray")
    assert compute.jobs(embedded_lake) == []
