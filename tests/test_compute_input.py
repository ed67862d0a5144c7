"""Odd input to the compute layer: refused with an error that names it, never accepted silently
nor answered with a traceback, and never a job that waits forever.

Fast: no job process is started here (the job folders are written as a submitter writes them).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import compute
import store
from compute import machine
from compute.leases import Ledger
from compute.machine import Capacity, detect, visible_gpus
from compute.model import JobSpec, JobStatus
from compute.state import JobFolder, JobStore, StatusRecord, write_atomic
from compute.supervise import supervise
from store.errors import InvalidArgumentError
from ui.cli import app


def _spec(job_id: str, **changes: object) -> JobSpec:
    fields: dict[str, object] = {
        "job_id": job_id,
        "name": "n",
        "backend": "local",
        "lake_location": "/lake",
        "namespace": "user:a",
        "user": "a",
        "input_ref": "main",
        "input_commit": "c" * 64,
        "output_branch": "user:a/o",
        "kind": "command",
        "command": ("python", "x.py"),
        "code_snapshot": "s",
        "resources": compute.Resources(),
        "environment": compute.Environment(),
        "retries": 0,
        "timeout": None,
        "submitted_at": 1.5,
        "submitter_python": sys.executable,
        **changes,
    }
    return JobSpec(**fields)  # type: ignore[arg-type]


def _job_folder(root: Path, job_id: str, spec_json: str) -> JobFolder:
    """A job folder as the submitter leaves it: status, log, then the spec."""
    folder = JobStore(root).new_folder(job_id)
    folder.write_status(StatusRecord(JobStatus.QUEUED.value), first=True)
    folder.log_file.touch()
    write_atomic(folder.spec_file, spec_json.encode())
    return folder


# -- resources ----------------------------------------------------------------------------------


def test_resources_take_numpy_numbers_as_a_sweep_gives_them() -> None:
    np = pytest.importorskip("numpy")
    resources = compute.Resources(gpus=np.int64(2), cpus=np.int32(3), memory=np.int64(1024))
    assert (resources.gpus, resources.cpus, resources.memory) == (2, 3.0, 1024)
    assert type(resources.gpus) is int  # the spec's JSON takes it
    with pytest.raises(compute.ResourceError, match="cpus"):
        compute.Resources(cpus=np.bool_(True))


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("-1GiB", "must not be negative, got '-1GiB'"),
        ("\u0664GiB", "is not a size"),  # an Arabic-Indic 4: int() reads it, a size does not
        ("4Gi", "units: B, KB"),
        ("4", r"has no unit: give a size such as '4GiB' or '4MiB' \(or bytes: '4B', or an int\)"),
        (math.nan, "finite number of bytes"),
        (-1, "finite number of bytes >= 0, got -1"),
    ],
)
def test_a_memory_size_that_is_not_one_is_refused_naming_it(memory: object, message: str) -> None:
    with pytest.raises(compute.ResourceError, match=message):
        compute.Resources(memory=memory)  # type: ignore[arg-type]


def test_memory_in_bytes_is_given_with_the_b_unit() -> None:
    assert compute.Resources(memory="4096B").memory_bytes == 4096


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FLOWLAKE_CPUS", "nan", "FLOWLAKE_CPUS='nan' must be a positive, finite number"),
        ("FLOWLAKE_CPUS", "inf", "FLOWLAKE_CPUS='inf' must be a positive, finite number"),
        ("FLOWLAKE_MEMORY", "-5", "FLOWLAKE_MEMORY='-5': memory must not be negative"),
        ("FLOWLAKE_MEMORY", "lots", "FLOWLAKE_MEMORY='lots': memory 'lots' is not a size"),
    ],
)
def test_a_machine_override_that_would_queue_every_job_forever_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(compute.ResourceError, match=message):
        detect()


def test_a_machine_of_unknown_memory_grants_a_job_that_reserves_memory(tmp_path: Path) -> None:
    """Memory 0 is unknown (FLOWLAKE_MEMORY=0, or no sysconf): submit does not check it, so the
    lease must not make the job wait for memory that is never counted free."""
    ledger = Ledger(tmp_path)
    wanted = compute.Resources(memory="1GiB")
    lease = ledger.acquire("a" * 32, wanted, Capacity(gpus=(), cpus=2.0, memory=0))
    assert lease is not None and lease.memory == 2**30
    ledger.release("a" * 32)


# -- environments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pypi", "key"), [({"NumPy": "1", "numpy": "2"}, "numpy"), ({"a_b": "", "A.B[x]": ""}, "a-b")]
)
def test_one_package_named_twice_is_refused_at_submit_not_in_the_build(
    pypi: dict[str, str], key: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"names the package '{key}' twice"):
        compute.Environment(pypi=pypi)


def test_run_refuses_a_package_given_twice_rather_than_keeping_the_last() -> None:
    result = CliRunner().invoke(
        app, ["run", "--pypi", "humanize==4.9.0", "--pypi", "humanize>=4", "--", "python", "x.py"]
    )
    assert result.exit_code == 2
    assert "humanize is given twice (humanize==4.9.0 and humanize>=4)" in " ".join(
        result.output.replace("│", " ").split()
    )


def test_an_index_without_packages_is_refused_rather_than_ignored() -> None:
    with pytest.raises(InvalidArgumentError, match="no package is named"):
        compute.Environment(index_url="https://pypi.example.org/simple")
    result = CliRunner().invoke(
        app, ["run", "--index-url", "https://pypi.example.org/simple", "--", "python", "x.py"]
    )
    assert result.exit_code == 2
    assert "give --pypi PKG too" in result.output


# -- job handles --------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-1, math.nan, "1", True])
def test_wait_refuses_a_timeout_that_is_not_seconds(tmp_path: Path, timeout: object) -> None:
    """NaN used to wait forever, a string raised TypeError and -1 waited 'after -1 s'."""
    job = compute.Job(JobFolder(tmp_path / "jobs" / ("a" * 32)))
    with pytest.raises(InvalidArgumentError, match="timeout must be a number of seconds >= 0"):
        job.wait(timeout=timeout)  # type: ignore[arg-type]


def test_a_result_this_process_cannot_unpickle_is_a_clear_error_naming_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that returns an object of a package only its environment has succeeded; wait()
    says so, rather than raising the unpickler's bare ModuleNotFoundError."""
    job_id = "5" * 32
    folder = _job_folder(tmp_path, job_id, _spec(job_id).to_json())
    only_in_the_job = types.ModuleType("only_in_the_job")
    exec("class Model:\n    pass\n", only_in_the_job.__dict__)
    only_in_the_job.Model.__module__ = "only_in_the_job"
    monkeypatch.setitem(sys.modules, "only_in_the_job", only_in_the_job)
    folder.attempt_dir(1).mkdir(parents=True)
    (folder.attempt_dir(1) / "result.pkl").write_bytes(pickle.dumps(only_in_the_job.Model()))
    monkeypatch.delitem(sys.modules, "only_in_the_job")
    folder.write_status(StatusRecord(JobStatus.SUCCEEDED.value, attempt=1))
    job = compute.Job(folder)
    with pytest.raises(compute.ComputeError, match=f"job {job_id} succeeded, but its result") as e:
        job.wait(timeout=5)
    assert "No module named 'only_in_the_job'" in str(e.value)


def test_a_job_id_prefix_too_short_ambiguous_or_in_upper_case_is_answered_clearly(
    tmp_path: Path,
) -> None:
    store_ = JobStore(tmp_path)
    first, second = "abcd1" + "0" * 27, "abcd2" + "0" * 27
    for job_id in (first, second):
        _job_folder(tmp_path, job_id, _spec(job_id).to_json())
    with pytest.raises(compute.JobNotFoundError, match="'abc' is too short: give at least 4"):
        store_.folder("abc")
    with pytest.raises(compute.JobNotFoundError, match=r"matches 2 jobs \(abcd10000000, abcd2"):
        store_.folder("abcd")
    assert store_.folder("ABCD1").job_id == first
    assert store_.folder(second.upper()).job_id == second
    with pytest.raises(InvalidArgumentError, match="'zzzz' is not a job id"):
        store_.folder("zzzz")
    with pytest.raises(compute.JobNotFoundError, match="no job 'ff' on this lake"):
        store_.folder("ff")


def test_a_job_cancelled_before_its_first_attempt_says_it_was_queued(tmp_path: Path) -> None:
    job_id = "e" * 32
    folder = _job_folder(tmp_path, job_id, _spec(job_id).to_json())
    folder.request_cancel()
    final = supervise(str(folder.path), gpus=())
    assert (final.status, final.error) == ("cancelled", "cancelled while queued")


# -- flowlake jobs ------------------------------------------------------------------------------


def _state_root(lake: store.Lake) -> Path:
    return JobStore.for_location(os.path.abspath(lake.location)).root


def test_jobs_lists_the_others_when_one_job_was_written_by_another_version(
    embedded_lake: store.Lake,
) -> None:
    root = _state_root(embedded_lake)
    readable, foreign = "1" * 32, "2" * 32
    _job_folder(root, readable, _spec(readable).to_json())
    _job_folder(root, foreign, _spec(foreign).to_json().replace('"version": 1', '"version": 99'))
    where = ["--lake", str(embedded_lake.location)]
    listed = CliRunner().invoke(app, ["jobs", "--json", *where])
    assert listed.exit_code == 0, listed.output
    assert readable in listed.stdout and foreign not in listed.stdout
    assert f"job {foreign[:12]} left out: job spec version 99" in listed.stderr


def test_jobs_shows_control_characters_of_a_name_escaped(embedded_lake: store.Lake) -> None:
    """A job's name is anyone's on the machine: an escape sequence in it must not reach the
    terminal of whoever lists jobs."""
    job_id = "3" * 32
    _job_folder(_state_root(embedded_lake), job_id, _spec(job_id, name="\x1b[2Jx\ny").to_json())
    listed = CliRunner().invoke(app, ["jobs", "--lake", str(embedded_lake.location)])
    assert listed.exit_code == 0, listed.output
    assert "\x1b" not in listed.stdout and "\\x1b[2Jx\\ny" in listed.stdout


def test_jobs_cuts_a_long_name_in_the_table_and_keeps_it_whole_in_json(
    embedded_lake: store.Lake,
) -> None:
    """``compute.map`` names a job after its arguments, which may be a large list."""
    job_id = "4" * 32
    name = "x=" + str(list(range(20000)))
    _job_folder(_state_root(embedded_lake), job_id, _spec(job_id, name=name).to_json())
    where = ["--lake", str(embedded_lake.location)]
    table = CliRunner().invoke(app, ["jobs", *where])
    assert table.exit_code == 0, table.output
    assert len(table.stdout) < 2000 and "x=[0, 1, 2" in table.stdout
    listed = CliRunner().invoke(app, ["jobs", "--json", *where])
    assert name in listed.stdout


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--timeout", "0"], "--timeout: a positive number of seconds, got 0"),
        (["--timeout", "nan"], "--timeout: a positive number of seconds, got nan"),
        (["--retries", "-1"], "'--retries'"),
    ],
)
def test_run_answers_a_bad_timeout_or_retries_as_a_usage_error(
    option: list[str], said: str
) -> None:
    """Exit 2, as every other bad option value of ``flowlake run``, before any lake is opened."""
    result = CliRunner().invoke(app, ["run", *option, "--", "python", "x.py"])
    assert result.exit_code == 2
    assert said in " ".join(result.output.replace("│", " ").split())


# -- environments, built ------------------------------------------------------------------------


def test_a_half_built_environment_left_by_a_killed_build_is_removed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor SIGKILLed while building leaves its temporary venv; the next build of the
    same environment (under the same lock) removes it rather than leaving it forever."""
    pytest.importorskip("uv")
    from compute import envs

    project = tmp_path / "index" / "simple" / "flowlake-probe"
    project.mkdir(parents=True)
    filename = "flowlake_probe-0.3-py3-none-any.whl"
    with zipfile.ZipFile(project / filename, "w") as wheel:  # the least a wheel holds
        info = "flowlake_probe-0.3.dist-info"
        wheel.writestr("flowlake_probe.py", "VERSION = '0.3'\n")
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: flowlake-probe\nVersion: 0.3\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    (project / "index.html").write_text(f'<a href="{filename}">{filename}</a>\n')
    (project.parent / "index.html").write_text('<a href="flowlake-probe/">flowlake-probe</a>\n')
    monkeypatch.setenv("FLOWLAKE_ENV_CACHE", str(tmp_path / "envs"))
    environment = compute.Environment(
        pypi={"flowlake-probe": ""}, index_url=(tmp_path / "index" / "simple").as_uri()
    )
    key = envs.env_key(envs.resolve(environment))
    half = envs.cache_dir() / f".{key}.0badc0de"
    (half / "lib").mkdir(parents=True)
    python = envs.ensure(environment)
    assert python.is_file() and not half.exists()
    assert sorted(p.name for p in envs.cache_dir().iterdir()) == [key, f"{key}.lock"]


def test_a_running_job_whose_supervisor_pid_was_reused_shows_killed() -> None:
    """After a reboot (or long enough), another process may have the supervisor's pid: its
    start token tells them apart, so the job does not show running forever."""
    from store.processes import hostname, start_token

    me = os.getpid()
    running = StatusRecord(JobStatus.RUNNING.value, host=hostname(), pid=me)
    assert running.effective() is JobStatus.RUNNING  # recorded before start tokens: the pid
    assert replace(running, pid_start=start_token(me)).effective() is JobStatus.RUNNING
    assert replace(running, pid_start="1").effective() is JobStatus.KILLED


# -- a real job ---------------------------------------------------------------------------------


def leaves_a_process_running() -> int:
    import subprocess

    return subprocess.Popen(["sleep", "300"]).pid  # a data loader's worker, say


@pytest.mark.usefixtures("declared_machine")
def test_what_a_job_leaves_running_ends_with_it(embedded_lake: store.Lake) -> None:
    """The job's lease (its GPUs) ends with the job: a process it left behind must not go on
    using them while the next job is granted them."""
    from store.processes import pid_alive

    job = compute.submit(leaves_a_process_running, lake=embedded_lake)
    left = job.wait(timeout=90)
    assert not pid_alive(left)


# -- GPUs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "devices"),
    [
        ("2,3", (2, 3)),
        (" 3 , 1 ", (3, 1)),
        ("", ()),
        ("-1", ()),
        ("0,-1,2", (0,)),  # CUDA stops at the first negative id
        ("1,1,7", (1,)),  # repeated, and not on this machine
        ("GPU-5c1d2e3f", (0, 1, 2, 3)),  # not understood here: FLOWLAKE_GPUS chooses
    ],
)
def test_local_jobs_use_only_the_gpus_the_submitter_is_given(
    visible: str, devices: tuple[int, ...]
) -> None:
    """On a shared machine a user given GPUs 2 and 3 (CUDA_VISIBLE_DEVICES=2,3) must not have
    jobs scheduled on 0 and 1."""
    assert visible_gpus(visible, (0, 1, 2, 3)) == devices


def test_a_job_submitted_from_a_job_is_not_bound_to_its_parents_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside a job flowlake set CUDA_VISIBLE_DEVICES to the job's own devices; a child job
    bound to them would wait for its parent's lease while the parent waits for it."""
    monkeypatch.delenv("FLOWLAKE_GPUS", raising=False)
    monkeypatch.setattr(machine, "_hardware_gpus", lambda: (0, 1, 2, 3))  # a 4-GPU machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert detect().gpus == (2,)
    monkeypatch.setenv("FLOWLAKE_JOB_ID", "6" * 32)
    assert detect().gpus == (0, 1, 2, 3)
