"""The ``ray`` backend: jobs on a Ray cluster (a local one, or ``address=`` / ``RAY_ADDRESS``).

A job becomes one Ray task that asks Ray for the job's resources (``num_gpus``, ``num_cpus``,
``memory``) and, once Ray grants them, runs the job's supervisor (:mod:`compute.supervise`)
inside the task with the GPU ids Ray assigned: the same attempts, timeout, cancel, logs and
atomic commit as on the local backend. The task's ``runtime_env`` carries the submitter's
``FLOWLAKE_*``, ``LAKECTL_*``, ``FSSPEC_*`` and ``AWS_*`` variables, so it opens the same lake. A
job's ``Environment`` is built by the task on its node with uv, exactly as on the local backend
(same cache, same pins), rather than with Ray's ``pip`` runtime_env, which needs ``virtualenv``
on every node. Job state stays in the lake's state
folder, so that folder must be on a filesystem every node sees (always true on one machine;
on a cluster, point ``FLOWLAKE_COMPUTE_DIR`` at shared storage).
"""

from __future__ import annotations

import os
from typing import Any

import ray

from compute.errors import ResourceError
from compute.model import JobSpec, JobStatus, Resources
from compute.state import JobFolder, StatusRecord

#: Environment variables a job needs to open the lake as the submitter does.
FORWARDED_PREFIXES = ("FLOWLAKE_", "LAKECTL_", "FSSPEC_", "AWS_")


@ray.remote(max_retries=0)
def _run_job(job_dir: str) -> str:
    from compute.supervise import supervise

    gpus = tuple(int(g) for g in ray.get_gpu_ids())
    return supervise(job_dir, gpus=gpus).status


class RayExecutor:
    """Runs jobs as Ray tasks."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        if not ray.is_initialized():
            ray.init(
                address=address or os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                log_to_driver=False,
            )

    def check(self, resources: Resources) -> None:
        cluster = ray.cluster_resources()
        for what, asked, key in (
            ("GPU(s)", resources.gpus, "GPU"),
            ("CPU(s)", resources.cpus, "CPU"),
            ("bytes of memory", resources.memory_bytes, "memory"),
        ):
            have = cluster.get(key, 0)
            if asked > have:
                raise ResourceError(
                    f"the job asks for {asked:g} {what} but the Ray cluster has {have:g}"
                )

    def launch(self, folder: JobFolder, spec: JobSpec) -> Any:
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
        runtime_env: dict[str, Any] = {"env_vars": env_vars}
        options: dict[str, Any] = {
            "num_gpus": spec.resources.gpus,
            "num_cpus": spec.resources.cpus,
            "runtime_env": runtime_env,
            "name": f"flowlake:{spec.name or spec.job_id[:12]}",
        }
        if spec.resources.memory_bytes:
            options["memory"] = spec.resources.memory_bytes
        return _run_job.options(**options).remote(str(folder.path))


def check_task(ref: Any, folder: JobFolder) -> None:
    """Record a job failed when its Ray task ended without its supervisor recording an end
    (the worker died, or the runtime environment could not be set up)."""
    ready, _ = ray.wait([ref], timeout=0)
    if not ready or folder.status().effective().is_final:
        return
    try:
        ray.get(ref)
    except Exception as exc:  # whatever Ray raised is the job's error
        if not folder.status().effective().is_final:
            folder.write_status(
                StatusRecord(JobStatus.FAILED.value, error=f"the Ray task failed: {exc}")
            )
