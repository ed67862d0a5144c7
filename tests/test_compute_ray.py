"""The ray backend on a real local Ray instance: the same pinning, atomic outputs, SIGKILL,
cancel, timeout, retries and environments as the local backend, GPU ids from Ray, resources the
cluster does not have refused at submit, and jobs that share a warm Ray worker without seeing
each other's code or state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_compute import (
    ENV_JOB_WAIT_S,
    JOB_WAIT_S,
    _run,
    _seed,
    _wait_for,
    check_runs_left_open,
    check_sys_exit_jobs,
    fail_first_attempt,
    humanize_version,
    leaves_a_thread_and_an_atexit_hook,
    read_pinned_after_main_moves,
    sleep_quietly,
    write_half_then_raise,
    write_then_sleep,
)

import compute
import store
from store.errors import InvalidArgumentError
from store.processes import pid_alive
from tracking import layout


@pytest.fixture(autouse=True)
def _ray(ray_cluster: object) -> None:
    """Every test here runs on the session's Ray. Ray jobs take no machine lease, and the
    forwarded environment stays the same from test to test, so tests share warm workers."""


def visible_devices() -> dict:
    ctx = compute.context()
    return {
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": list(ctx.gpus),
        "pid": os.getpid(),
    }


def test_a_ray_job_reads_its_pinned_commit_and_merges_atomically(
    embedded_lake: store.Lake,
) -> None:
    lake = embedded_lake
    v1 = _seed(lake, b"v1")
    job = compute.submit(
        read_pinned_after_main_moves,
        {"expected_main": "v2"},
        lake=lake,
        output_branch="sweep",
        backend="ray",
        resources=compute.Resources(gpus=2, cpus=1),
    )
    _seed(lake, b"v2")
    assert job.wait(timeout=JOB_WAIT_S)["pinned"] == "v1"
    assert lake.read_bytes("out/seen.txt", ref="sweep") == b"v1"
    assert _run(lake, job.run_id)["input_commit"] == v1
    assert len(job.gpus) == 2 and set(job.gpus) <= {0, 1, 2, 3}

    before = lake.resolve("sweep")
    failing = compute.submit(write_half_then_raise, lake=lake, output_branch="sweep", backend="ray")
    with pytest.raises(compute.JobFailedError, match="boom at half"):
        failing.wait(timeout=JOB_WAIT_S)
    assert lake.resolve("sweep") == before
    assert _run(lake, failing.run_id)["status"] == "failed"


def test_ray_jobs_that_call_sys_exit_end_as_python_would(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    check_sys_exit_jobs(embedded_lake, tmp_path, "ray")


def test_a_run_a_ray_jobs_code_left_open_ends_failed_when_the_code_raised(
    embedded_lake: store.Lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _seed(embedded_lake)
    # Variables of their own: a pool of warm workers for these two jobs alone, so that the
    # second runs where the first failed (which must not leave it failing the next job's runs).
    monkeypatch.setenv("FLOWLAKE_TEST_POOL", os.urandom(8).hex())
    failed_in, finished_in = check_runs_left_open(embedded_lake, "ray", tmp_path)
    assert failed_in == finished_in


def test_a_ray_job_for_another_cluster_than_the_one_connected_is_refused(
    embedded_lake: store.Lake,
) -> None:
    _seed(embedded_lake)
    with pytest.raises(InvalidArgumentError, match="connected to the Ray cluster at"):
        compute.submit(fail_first_attempt, lake=embedded_lake, backend="ray", address="127.0.0.1:9")
    assert compute.jobs(embedded_lake) == []


def test_a_ray_job_sees_the_gpus_ray_gave_it_in_a_worker_of_its_own(
    embedded_lake: store.Lake,
) -> None:
    _seed(embedded_lake)
    seen = []
    for _ in range(2):
        job = compute.submit(
            visible_devices, lake=embedded_lake, backend="ray", resources=compute.Resources(gpus=1)
        )
        seen.append(job.wait(timeout=JOB_WAIT_S))
        assert seen[-1]["visible"] == str(seen[-1]["gpus"][0])
        assert seen[-1]["gpus"] == list(job.gpus)
    # CUDA reads CUDA_VISIBLE_DEVICES once per process: a GPU job never inherits a used worker.
    assert seen[0]["pid"] != seen[1]["pid"]
    cpu = compute.submit(visible_devices, lake=embedded_lake, backend="ray").wait(
        timeout=JOB_WAIT_S
    )
    assert cpu["visible"] == "" and cpu["gpus"] == []


def test_ray_refuses_more_gpus_than_the_cluster_has(embedded_lake: store.Lake) -> None:
    _seed(embedded_lake)
    started = time.monotonic()
    with pytest.raises(compute.ResourceError, match="the Ray cluster has 4"):
        compute.submit(
            visible_devices,
            lake=embedded_lake,
            backend="ray",
            resources=compute.Resources(gpus=5),
        )
    assert time.monotonic() - started < 30
    assert compute.jobs(embedded_lake) == []


def test_a_ray_job_runs_in_its_uv_environment(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uv", reason="job environments need the compute extra")
    monkeypatch.setenv("FLOWLAKE_ENV_CACHE", str(tmp_path / "envs"))
    _seed(embedded_lake)
    env = compute.Environment(pypi={"humanize": "4.9.0"})
    job = compute.submit(humanize_version, lake=embedded_lake, backend="ray", environment=env)
    assert job.wait(timeout=ENV_JOB_WAIT_S)["version"] == "4.9.0"
    again = compute.submit(humanize_version, lake=embedded_lake, backend="ray", environment=env)
    assert again.wait(timeout=ENV_JOB_WAIT_S)["python"] == job.wait()["python"] != sys.executable
    assert len([p for p in (tmp_path / "envs").iterdir() if p.is_dir()]) == 1
    ref = f"{embedded_lake.namespace}/{layout.run_branch_short(again.run_id)}"  # type: ignore[arg-type]
    packages = embedded_lake.read_table(
        layout.run_file(again.run_id, layout.ENVIRONMENT_FILE),  # type: ignore[arg-type]
        ref=ref,
    ).to_pylist()
    assert ("humanize", "4.9.0") in [(p["name"], p["version"]) for p in packages]

    bad = compute.submit(
        humanize_version,
        lake=embedded_lake,
        backend="ray",
        environment=compute.Environment(pypi={"humanize": "999.0"}),
    )
    with pytest.raises(compute.JobFailedError, match="No solution found") as err:
        bad.wait(timeout=ENV_JOB_WAIT_S)
    assert err.value.status == "failed" and bad.run_id is None

    # An environment whose packages break `import ray` fails the job (Ray would otherwise
    # retry starting its worker forever, the job queued).
    venv = Path(job.wait()["python"]).parent.parent
    (venv / ".flowlake-ray-ready").unlink()
    for site_packages in venv.glob("lib/python*/site-packages"):
        (site_packages / "ray.py").write_text("raise ImportError('shadowed by the job')\n")
    broken = compute.submit(humanize_version, lake=embedded_lake, backend="ray", environment=env)
    with pytest.raises(compute.JobFailedError, match="cannot run a Ray worker.*shadowed"):
        broken.wait(timeout=ENV_JOB_WAIT_S)
    assert broken.run_id is None


def test_a_sigkilled_ray_worker_shows_killed_and_merges_nothing(embedded_lake: store.Lake) -> None:
    lake = embedded_lake
    _seed(lake)
    before = lake.branch("results", source="main").head().id
    job = compute.submit(
        write_then_sleep, {"seconds": 60}, lake=lake, output_branch="results", backend="ray"
    )
    _wait_for(lambda: "started" in job.logs())
    # The watcher records the attempt running, with its worker's pid, from its own thread.
    _wait_for(lambda: job.pid is not None)
    assert job.status is compute.JobStatus.RUNNING and job.pid is not None
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(compute.JobFailedError, match="killed"):
        job.wait(timeout=JOB_WAIT_S)
    assert job.status is compute.JobStatus.KILLED
    assert lake.resolve("results") == before
    run = _run(lake, job.run_id)
    assert run["status"] == "killed", job.logs()
    assert lake.read_bytes("out/partial.txt", ref=run["run_branch"]) == b"partial"
    log = lake.read_bytes(
        f"{layout.run_dir(run['run_id'])}/logs/attempt-1.log", ref=run["run_branch"]
    )
    assert b"started" in log


def test_cancel_and_timeout_stop_ray_jobs_and_the_processes_they_started(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    lake = embedded_lake
    _seed(lake)
    all_gpus = compute.Resources(gpus=4)
    pid_file = tmp_path / "child.pid"
    running = compute.submit(
        command=["sh", "-c", f"echo $$ > {pid_file}; echo started; sleep 60"],
        lake=lake,
        backend="ray",
        resources=all_gpus,
        code_dir=tmp_path,
    )
    _wait_for(lambda: "started" in running.logs())
    queued = compute.submit(
        write_then_sleep, {"seconds": 60}, lake=lake, backend="ray", resources=all_gpus
    )
    time.sleep(0.3)
    assert queued.status is compute.JobStatus.QUEUED
    queued.cancel()
    running.cancel()
    for job in (running, queued):
        with pytest.raises(compute.JobFailedError, match="cancelled"):
            job.wait(timeout=JOB_WAIT_S)
        assert job.status is compute.JobStatus.CANCELLED
    assert _run(lake, running.run_id)["status"] == "killed", running.logs()
    assert queued.run_id is None
    _wait_for(lambda: not pid_alive(int(pid_file.read_text())))

    timed = compute.submit(sleep_quietly, {"seconds": 60}, lake=lake, backend="ray", timeout=2)
    with pytest.raises(compute.JobFailedError, match="timed out after 2 s"):
        timed.wait(timeout=JOB_WAIT_S)
    run = _run(lake, timed.run_id)
    assert run["status"] == "failed" and "timed out" in (run["error"] or ""), timed.logs()
    # The clock runs from the attempt's start, so on a loaded machine the job may time out
    # before its first line: the log on the run is checked for what is written either way.
    log = lake.read_bytes(
        f"{layout.run_dir(run['run_id'])}/logs/attempt-1.log", ref=run["run_branch"]
    )
    assert b"timed out after 2 s" in log


def test_a_failed_ray_attempt_is_retried_as_a_new_run(embedded_lake: store.Lake) -> None:
    _seed(embedded_lake)
    job = compute.submit(
        fail_first_attempt, lake=embedded_lake, retries=1, output_branch="r", backend="ray"
    )
    assert job.wait(timeout=JOB_WAIT_S) == 2
    assert "attempt 1 failed; retrying" in job.logs()
    run_ids = [b.name.rsplit("/run-", 1)[1] for b in embedded_lake.branches() if "/run-" in b.name]
    statuses = sorted(_run(embedded_lake, run_id)["status"] for run_id in run_ids)
    assert statuses == ["failed", "finished"]


def test_ray_jobs_sharing_warm_workers_run_their_own_snapshot_and_leave_nothing_behind(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = embedded_lake
    _seed(lake)
    project = tmp_path / "project"
    project.mkdir()
    module = project / "snapshot_probe.py"
    body = """
        import os, sys
        VERSION = {version}
        def probe():
            seen = os.environ.get("PROBE_LEAK"), os.getcwd(), sys.argv[:]
            os.environ["PROBE_LEAK"] = "left by a job"
            sys.argv.append("left by a job")
            return VERSION, seen
        """
    module.write_text(textwrap.dedent(body.format(version=1)))
    monkeypatch.syspath_prepend(str(project))
    import snapshot_probe  # type: ignore[import-not-found]

    # Both CPUs each: the jobs run one after the other, most often in the same worker.
    both = compute.Resources(cpus=2)
    results = []
    for version in (1, 2, 3):
        module.write_text(textwrap.dedent(body.format(version=version)))
        job = compute.submit(
            snapshot_probe.probe, lake=lake, backend="ray", code_dir=project, resources=both
        )
        results.append(job.wait(timeout=JOB_WAIT_S))
    assert [version for version, _ in results] == [1, 2, 3]
    for _, (leak, cwd, argv) in results:
        assert leak is None and "left by a job" not in argv
        assert cwd.startswith(str(lake.location))

    out = tmp_path / "exit.txt"
    job = compute.submit(
        leaves_a_thread_and_an_atexit_hook, {"out": str(out)}, lake=lake, backend="ray"
    )
    job.wait(timeout=JOB_WAIT_S)
    assert out.read_text() == "thread\natexit\n"


SUBMIT_AND_EXIT = """
import sys, time, compute, store
lake = store.open(sys.argv[1], create=False)
sleeper = ["sh", "-c", "echo started; sleep 60"]
left = compute.submit(command=sleeper, lake=lake, backend="ray", code_dir=sys.argv[2])
cancelled = compute.submit(command=sleeper, lake=lake, backend="ray", code_dir=sys.argv[2])
deadline = time.monotonic() + 60
while not all("started" in job.logs() for job in (left, cancelled)):
    assert time.monotonic() < deadline, "the jobs never started"
    time.sleep(0.05)
cancelled.cancel()  # as Ctrl-C on `flowlake run` does, then exits at once
print(left.id, cancelled.id)
"""


def test_ray_jobs_of_a_submitter_that_exits_are_stopped_and_recorded(
    embedded_lake: store.Lake, ray_cluster: object, tmp_path: Path
) -> None:
    import ray

    lake = embedded_lake
    _seed(lake)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT_AND_EXIT, str(lake.location), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_WAIT_S,
        check=True,
    )
    left_id, cancelled_id = done.stdout.split()
    left, cancelled = compute.get_job(lake, left_id), compute.get_job(lake, cancelled_id)
    # Recorded by the submitter on its way out, not inferred from its dead pid.
    assert cancelled.record().status == "cancelled"
    assert left.record().status == "killed"
    assert "its submitting process exited" in (left.error or "")
    run = _run(lake, left.run_id)
    assert run["status"] == "killed"
    log = lake.read_bytes(
        f"{layout.run_dir(run['run_id'])}/logs/attempt-1.log", ref=run["run_branch"]
    )
    assert b"started" in log


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return "ran"


def _failing_bookkeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writing a job's first status fail (a full disk, say): its bookkeeping fails after
    every check passed."""
    from compute.state import JobFolder

    write_status = JobFolder.write_status

    def failing(self: JobFolder, record: object, *, first: bool = False) -> None:
        if first:
            raise OSError(28, "No space left on device")
        write_status(self, record, first=first)  # type: ignore[arg-type]

    monkeypatch.setattr(JobFolder, "write_status", failing)


def test_a_ray_job_whose_bookkeeping_fails_after_it_was_sent_never_runs_and_leaves_nothing(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's bookkeeping is written after the task went to Ray: when that fails, the task
    is withdrawn before the job's code runs, and no job, folder or branch exists."""
    from compute.backends import ray as ray_backend
    from compute.state import JobStore

    sent: list[object] = []
    task = ray_backend._task
    monkeypatch.setattr(ray_backend, "_task", lambda *a: sent.append(a) or task(*a))
    lake = embedded_lake
    _seed(lake)
    branches = lake.branches(all_namespaces=True)
    marker = tmp_path / "ran.txt"
    with monkeypatch.context() as failing:
        _failing_bookkeeping(failing)
        with pytest.raises(OSError, match="No space left"):
            # Written after submit returned: raised by submit or by the next call on the job.
            failed = compute.submit(
                touch, {"path": str(marker)}, lake=lake, output_branch="out", backend="ray"
            )
            failed.wait(timeout=JOB_WAIT_S)
        with pytest.raises(OSError, match="No space left"):
            failed.status  # noqa: B018 - every later call raises it too
    assert len(sent) == 1  # it was sent (the cluster is one node), then withdrawn
    assert compute.jobs(lake) == []
    assert list((JobStore.for_location(str(lake.location)).root / "jobs").iterdir()) == []
    # The next job runs (in the same warm worker) while the withdrawn one never does.
    job = compute.submit(touch, {"path": str(tmp_path / "next.txt")}, lake=lake, backend="ray")
    assert job.wait(timeout=JOB_WAIT_S) == "ran"
    time.sleep(0.5)
    assert not marker.exists()
    names = {b.name for b in lake.branches(all_namespaces=True)}
    assert not any(n.rsplit("/", 1)[-1] == "out" for n in names)
    assert {b.name for b in branches} <= names


def test_a_ray_job_is_listed_as_soon_as_submit_returns(
    embedded_lake: store.Lake, tmp_path: Path
) -> None:
    """Its bookkeeping is written in the background, but any listing, here or (once written)
    in another process, sees a job whose submit has returned."""
    from compute.state import JobStore

    lake = embedded_lake
    _seed(lake)
    job = compute.submit(touch, {"path": str(tmp_path / "ran.txt")}, lake=lake, backend="ray")
    assert job.id in [j.id for j in compute.jobs(lake)]
    assert (
        JobStore.for_location(str(lake.location)).root / "jobs" / job.id / "spec.json"
    ).is_file()
    assert compute.get_job(lake, job.id).spec.name == "touch"
    assert job.wait(timeout=JOB_WAIT_S) == "ran"


def test_a_ray_attempt_starts_from_its_arguments_and_opens_the_lake_once_the_job_is_written(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt is sent the spec and payload: its code starts without waiting for the spec
    file and never reads it (here written late and unreadable); the attempt opens the lake
    (and merges) only once the job's bookkeeping is written."""
    from compute import submission

    lake = embedded_lake
    _seed(lake)
    write_atomic = submission.write_atomic
    written: list[float] = []

    def late_and_unreadable(path: Path, data: bytes) -> None:
        time.sleep(1.0)
        write_atomic(path, b'{"not": "a spec"}')
        written.append(time.time())

    monkeypatch.setattr(submission, "write_atomic", late_and_unreadable)
    marker = tmp_path / "ran.txt"
    job = compute.submit(touch, {"path": str(marker)}, lake=lake, backend="ray")
    assert job.wait(timeout=JOB_WAIT_S) == "ran"
    assert len(written) == 1 and marker.stat().st_mtime < written[0]
    record = job.record()
    assert record.output_commit is not None and record.ended_at is not None
    assert record.ended_at >= written[0]


def test_a_new_ray_output_branch_named_like_a_tag_is_refused_before_anything_is_sent(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt creates a new output branch, but whatever would refuse creating it is
    checked at submit, before the task goes to Ray."""
    from compute.backends import ray as ray_backend

    sent: list[object] = []
    task = ray_backend._task
    monkeypatch.setattr(ray_backend, "_task", lambda *a: sent.append(a) or task(*a))
    lake = embedded_lake
    _seed(lake)
    lake.tag("release", "main")
    branches = lake.branches(all_namespaces=True)
    with pytest.raises(store.errors.AmbiguousNameError, match="release"):
        compute.submit(
            touch, {"path": str(tmp_path / "x")}, lake=lake, output_branch="release", backend="ray"
        )
    assert sent == [] and compute.jobs(lake) == []
    assert lake.branches(all_namespaces=True) == branches


def test_an_attempt_waits_for_its_spec_and_gives_up_on_a_withdrawn_job(tmp_path: Path) -> None:
    import threading

    from compute.backends.ray_attempt import _await_spec
    from compute.errors import ComputeError
    from compute.state import JobFolder

    folder = JobFolder(tmp_path / "job")
    folder.path.mkdir()
    writer = threading.Timer(0.2, lambda: folder.spec_file.write_text("{}"))
    writer.start()
    started = time.monotonic()
    _await_spec(folder)
    assert time.monotonic() - started >= 0.15 and folder.spec_file.is_file()

    gone = JobFolder(tmp_path / "withdrawn")
    gone.path.mkdir()
    threading.Timer(0.1, gone.path.rmdir).start()
    with pytest.raises(ComputeError, match="withdrawn"):
        _await_spec(gone)

    marked = JobFolder(tmp_path / "marked")
    marked.path.mkdir()
    threading.Timer(0.1, marked.withdrawn_file.touch).start()
    with pytest.raises(ComputeError, match="withdrawn"):
        _await_spec(marked)


def test_a_start_marker_being_written_reads_as_not_there_yet(tmp_path: Path) -> None:
    from compute.backends.ray_attempt import STARTED_FILE, read_started

    assert read_started(tmp_path) is None
    (tmp_path / STARTED_FILE).write_bytes(b"")
    assert read_started(tmp_path) is None
    (tmp_path / STARTED_FILE).write_bytes(b'{"pid": 1')
    assert read_started(tmp_path) is None
    (tmp_path / STARTED_FILE).write_bytes(b'{"pid": 1}')
    assert read_started(tmp_path) == {"pid": 1}


def test_the_clusters_totals_are_asked_once_a_while_and_again_before_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from compute.backends import ray as ray_backend

    asked: list[dict[str, float]] = []
    totals = {"CPU": 2.0, "GPU": 4.0}

    def cluster_resources() -> dict[str, float]:
        asked.append(dict(totals))
        return dict(totals)

    monkeypatch.setattr(ray, "cluster_resources", cluster_resources)
    monkeypatch.setattr(ray_backend, "_cluster", [])
    executor = ray_backend.RayExecutor()
    for _ in range(3):
        executor.check(compute.Resources(gpus=1))
    assert len(asked) == 1
    with pytest.raises(compute.ResourceError, match="the Ray cluster has 4"):
        executor.check(compute.Resources(gpus=6))
    assert len(asked) == 2  # asked again before refusing
    totals["GPU"] = 8.0  # the cluster grew: seen at once, though the totals are fresh
    executor.check(compute.Resources(gpus=6))
    assert len(asked) == 3
    monkeypatch.setattr(ray_backend, "CLUSTER_TTL_S", 0.0)
    executor.check(compute.Resources(gpus=1))
    assert len(asked) == 4


def test_on_a_cluster_of_several_nodes_a_ray_job_is_sent_only_once_written(
    embedded_lake: store.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node may see the shared state folder late (NFS caches a file's absence), so on
    such a cluster nothing goes to Ray before the job exists: a job refused while its
    bookkeeping is written was never sent at all."""
    import ray

    from compute.backends import ray as ray_backend

    real = ray.cluster_resources()
    monkeypatch.setattr(ray, "cluster_resources", lambda: {**real, "node:192.0.2.99": 1.0})
    monkeypatch.setattr(ray_backend, "_cluster", [])
    sent: list[object] = []
    task = ray_backend._task
    monkeypatch.setattr(ray_backend, "_task", lambda *a: sent.append(a) or task(*a))
    lake = embedded_lake
    _seed(lake)
    with monkeypatch.context() as failing:
        _failing_bookkeeping(failing)
        with pytest.raises(OSError, match="No space left"):
            compute.submit(touch, {"path": str(tmp_path / "x")}, lake=lake, backend="ray")
    assert sent == [] and compute.jobs(lake) == []
    job = compute.submit(touch, {"path": str(tmp_path / "y")}, lake=lake, backend="ray")
    assert job.wait(timeout=JOB_WAIT_S) == "ran" and len(sent) == 1


def test_an_attempt_packed_by_another_flowlake_version_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    """The attempt's one argument carries the spec's version: a worker whose flowlake reads
    another refuses it, naming both, before it touches the job's folder."""
    import pickle

    from compute.backends.ray_attempt import pack, run_packed
    from compute.model import SPEC_VERSION

    message = pack(str(tmp_path / "job"), 1, {"FLOWLAKE_X": "1"})
    version, job_dir, attempt, env, spec, payload = pickle.loads(message)
    assert (version, job_dir, attempt, env, spec, payload) == (
        SPEC_VERSION,
        str(tmp_path / "job"),
        1,
        {"FLOWLAKE_X": "1"},
        None,
        None,
    )
    other = pickle.dumps((SPEC_VERSION + 1, job_dir, attempt, env, spec, payload))
    with pytest.raises(store.errors.InvalidArgumentError, match="different flowlake versions"):
        run_packed(other, ())
    assert not (tmp_path / "job").exists()
