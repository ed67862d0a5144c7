"""The ray backend on a real local Ray instance: the same pinning and atomic outputs as the
local backend, GPU ids from Ray, and resources the cluster does not have refused at submit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_compute import (
    ENV_JOB_WAIT_S,
    JOB_WAIT_S,
    _run,
    _seed,
    humanize_version,
    read_pinned_after_main_moves,
    write_half_then_raise,
)

import compute
import store


@pytest.fixture(autouse=True)
def _ray(ray_cluster: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWLAKE_LEASE_DIR", str(tmp_path / "leases"))


def visible_devices() -> dict:
    ctx = compute.context()
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": list(ctx.gpus)}


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


def test_a_ray_job_sees_the_gpus_ray_gave_it(embedded_lake: store.Lake) -> None:
    _seed(embedded_lake)
    job = compute.submit(
        visible_devices, lake=embedded_lake, backend="ray", resources=compute.Resources(gpus=1)
    )
    seen = job.wait(timeout=JOB_WAIT_S)
    assert seen["visible"] == str(seen["gpus"][0]) and seen["gpus"] == list(job.gpus)


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
    job = compute.submit(
        humanize_version,
        lake=embedded_lake,
        backend="ray",
        environment=compute.Environment(pypi={"humanize": "4.9.0"}),
    )
    assert job.wait(timeout=ENV_JOB_WAIT_S)["version"] == "4.9.0"
