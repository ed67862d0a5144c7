"""The ``ray`` backend: jobs on a Ray cluster (a local one, or ``address=`` / ``RAY_ADDRESS``).

Each attempt of a job is one Ray task that asks Ray for the job's resources (``num_gpus``,
``num_cpus``, ``memory``) and, once Ray grants them, runs the job's code inside that warm Ray
worker (:mod:`compute.backends.ray_attempt`) with the GPU ids Ray assigned: no interpreter
starts between Ray granting the resources and the job's first line, and a worker that has run
a job before has flowlake loaded already. The job's supervisor is a thread of the submitting
process (:mod:`compute.backends.ray_watch`): the same attempts, retries, timeout, cancel, logs
and atomic commit as on the local backend, with Ray ending the worker to stop a job.

The attempt gets the submitter's ``FLOWLAKE_*``, ``LAKECTL_*``, ``FSSPEC_*`` and ``AWS_*``
variables, so it opens the same lake, as a task argument that the attempt puts into the
worker's environment for its length only: never through ``runtime_env``, which Ray keeps in its
cluster state (task events, the state API, the dashboard) and writes to its session logs, and
these variables hold secrets (``FLOWLAKE_TOKEN``, object store keys). The task's
``runtime_env`` carries only a digest of them, so a warm worker is only ever reused by jobs with
the same variables (what a library read from them at import stays right). A job's
``Environment`` is built with uv by a small Ray task on a node (the same cache and pins as on
the local backend), and the attempt runs on that node with the environment's interpreter as
its ``runtime_env``'s ``py_executable``; Ray's own ``pip`` and ``uv`` runtime_env fields both
need ``virtualenv`` on every node (and clone the driver's whole virtual environment). Job state
stays in the lake's state folder, so that folder must be on a filesystem every node sees
(always true on one machine; on a cluster, point ``FLOWLAKE_COMPUTE_DIR`` at shared storage).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from compute.backends.ray_attempt import pack
from compute.backends.ray_watch import Prepared, Watcher
from compute.bookkeeping import settled, write_later
from compute.errors import ResourceError
from compute.model import Environment, JobSpec, Resources
from compute.state import JobFolder, StatusRecord

#: Environment variables a job needs to open the lake as the submitter does.
FORWARDED_PREFIXES = ("FLOWLAKE_", "LAKECTL_", "FSSPEC_", "AWS_")


#: The ``runtime_env`` variable naming the digest of a job's forwarded variables.
ENV_DIGEST = "FLOWLAKE_RAY_ENV"


def _run_attempt(message: bytes) -> int:
    from compute.backends.ray_attempt import run_packed

    gpus = tuple(int(g) for g in ray.get_gpu_ids())
    return run_packed(message, gpus)


#: A CPU job's attempt: its worker goes on to run later jobs, warm.
_attempt = ray.remote(max_retries=0)(_run_attempt)
#: A GPU job's attempt: its worker exits after the job (Ray's own default for GPU tasks), since
#: CUDA reads ``CUDA_VISIBLE_DEVICES`` once and a job's CUDA memory lives as long as its process.
_gpu_attempt = ray.remote(num_gpus=1, max_retries=0)(_run_attempt)


@ray.remote(num_cpus=0, max_retries=0)
def _prepare(environment: Environment, env: dict[str, str]) -> tuple[str, str, str]:
    from compute.backends.ray_attempt import environ_applied, prepare_environment

    with environ_applied(env):
        kind, value = prepare_environment(environment)
    return kind, value, ray.get_runtime_context().get_node_id()


def _forwarded_env() -> dict[str, str]:
    """The submitter's variables a job needs (secrets among them: never put in ``runtime_env``)."""
    environ = os.environ
    # Names first, values only of the few forwarded: items() encodes and decodes every pair.
    return {
        k: environ[k]
        for k in list(environ)
        if k.startswith(FORWARDED_PREFIXES) and not k.startswith("FLOWLAKE_RAY_")
    }


def _runtime_env_vars(env: dict[str, str]) -> dict[str, str]:
    """What a task's ``runtime_env`` may say about ``env``: its SHA-256 only."""
    canonical = json.dumps(sorted(env.items()), separators=(",", ":")).encode()
    return {ENV_DIGEST: hashlib.sha256(canonical).hexdigest()}


def _launch(
    folder: JobFolder,
    spec: JobSpec,
    attempt: int,
    prepared: Prepared | None,
    inline: tuple[JobSpec, bytes | None] | None = None,
) -> Any:
    """Start attempt ``attempt`` of the job as a Ray task; returns its object ref. With
    ``inline`` (the spec and the payload) the attempt reads neither from the job's folder, which
    may not be written yet.

    The task gets one argument, the attempt's whole message pickled into one ``bytes``
    (:func:`compute.backends.ray_attempt.pack`): Ray serialises and ships each argument of a
    task on its own, and one ready ``bytes`` is the cheapest for it to send.
    """
    env = _forwarded_env()
    gpu = bool(spec.resources.gpus)
    if prepared is None:
        task = _task(spec, env, gpu)
    else:  # on the node its environment was built on: not worth keeping
        options = _options(spec, env, gpu)
        options["runtime_env"]["py_executable"] = prepared.python
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            prepared.node_id, soft=False
        )
        task = (_gpu_attempt if gpu else _attempt).options(**options)
    spec_sent, payload = inline if inline is not None else (None, None)
    return task.remote(pack(str(folder.path), attempt, env, spec_sent, payload))


def _options(spec: JobSpec, env: dict[str, str], gpu: bool) -> dict[str, Any]:
    """The attempt task's Ray options for ``spec`` run with ``env``."""
    env_vars = _runtime_env_vars(env)
    if gpu:
        # A worker of their own: never one where a CPU job may have initialised CUDA already.
        env_vars["FLOWLAKE_RAY_WORKER"] = "gpu"
    options: dict[str, Any] = {
        "num_gpus": spec.resources.gpus,
        "num_cpus": spec.resources.cpus,
        "name": f"flowlake:{spec.name or spec.job_id[:12]}",
        "runtime_env": {"env_vars": env_vars},
    }
    if spec.resources.memory_bytes:
        options["memory"] = spec.resources.memory_bytes
    return options


#: How many differently configured attempt tasks :func:`_task` keeps.
TASK_CACHE_SIZE = 64
_tasks: dict[tuple[Any, ...], Any] = {}
_tasks_lock = threading.Lock()


def _task(spec: JobSpec, env: dict[str, str], gpu: bool) -> Any:
    """The attempt task configured for ``spec`` and ``env``: Ray checks a task's options and
    ``runtime_env`` each time they are given, so jobs launched alike reuse the configured
    task (keyed by what the options are made of, so a launch builds none of them)."""
    resources = spec.resources
    key = (
        gpu,
        resources.gpus,
        resources.cpus,
        resources.memory_bytes,
        spec.name or spec.job_id[:12],
        tuple(sorted(env.items())),
    )
    with _tasks_lock:
        task = _tasks.get(key)
    if task is None:
        task = (_gpu_attempt if gpu else _attempt).options(**_options(spec, env, gpu))
        with _tasks_lock:
            if len(_tasks) >= TASK_CACHE_SIZE:
                del _tasks[next(iter(_tasks))]
            _tasks[key] = task
    return task


#: The ``address=`` this module last started Ray with in this process.
_connected_with: list[str | None] = []

_watcher_lock = threading.Lock()
_watchers: list[Watcher] = []


def _watcher() -> Watcher:
    """This process's one watcher (a new one after Ray was shut down and started again)."""
    with _watcher_lock:
        if not _watchers or not _watchers[-1].alive:
            _watchers.append(Watcher(_launch))
        return _watchers[-1]


class RayExecutor:
    """Runs jobs as Ray tasks."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        """Connect to the cluster at ``address`` (else ``RAY_ADDRESS``, else a local Ray),
        unless this process is connected already.

        Raises:
            InvalidArgumentError: ``address`` names another cluster than the one this process
                is connected to (Ray connects a process to one cluster).
        """
        if not ray.is_initialized():
            ray.init(
                address=address or os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                log_to_driver=False,
            )
            _connected_with[:] = [address]
            return
        if address is None or address == "auto" or _connected_with == [address]:
            return
        if address.startswith("ray://"):  # a Ray client's server: not comparable to the GCS's
            return
        connected = ray.get_runtime_context().gcs_address
        if address != connected:
            from store.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"this process is connected to the Ray cluster at {connected}, not {address}; "
                "call ray.shutdown() first to use another cluster"
            )

    #: Whether the cluster was one node when :meth:`check` last asked (see :meth:`send`).
    single_node = False

    def check(self, resources: Resources) -> None:
        """Refuse what the cluster does not have, from its totals as last asked (at most
        :data:`CLUSTER_TTL_S` ago; asked again before a refusal, so a cluster that grew is seen).

        Raises:
            ResourceError: more GPUs, CPUs or memory than the cluster has (the message says both).
        """
        cluster = _cluster_resources(fresh=False)
        if _lacking(resources, cluster) is not None:
            cluster = _cluster_resources(fresh=True)
        self.single_node = _node_count(cluster) == 1
        lacking = _lacking(resources, cluster)
        if lacking is not None:
            what, asked, have = lacking
            raise ResourceError(
                f"the job asks for {asked:g} {what} but the Ray cluster has {have:g}"
            )

    def send(
        self,
        folder: JobFolder,
        spec: JobSpec,
        inline: tuple[JobSpec, bytes | None],
        prepare: Callable[[StatusRecord], None],
    ) -> tuple[Watcher, Future[None]]:
        """Send the job's first attempt to Ray with its spec and payload in its argument, then
        have its bookkeeping (``prepare``) written by this process's background writer: the
        attempt starts without reading any of it, and waits for the spec file only right before
        the job's code. When ``prepare`` raises, the job is withdrawn (:meth:`Watcher.withdraw`)
        and its folder removed. Prepared first, then launched, in this thread: a job with an
        environment (built before the attempt anyway), and any job on a cluster of more than
        one node, whose shared state folder another node may see late (NFS caches a file's
        absence for seconds, which a waiting attempt would then wait out)."""
        watcher = _watcher()
        if not spec.environment.is_default or not self.single_node:
            prepare(watcher.first_record())
            return self.launch(folder, spec), settled()
        job = watcher.send(folder, spec, inline)

        def bookkeeping() -> None:
            try:
                # Its attempt's folder first: the attempt, started meanwhile, finds it made.
                folder.attempt_dir(1).mkdir(parents=True, exist_ok=True)
                prepare(job.record)
            except BaseException:
                watcher.withdraw(job)
                shutil.rmtree(folder.path, ignore_errors=True)
                raise
            watcher.admit(job)

        return watcher, write_later(bookkeeping)

    def launch(self, folder: JobFolder, spec: JobSpec) -> Watcher:
        """Start the job whose folder is written (for a job with an environment: once the
        environment is built, by a Ray task of its own)."""
        watcher = _watcher()
        prep = None
        if not spec.environment.is_default:
            with open(folder.log_file, "ab") as log:
                log.write(b"[flowlake] preparing the environment\n")
            env = _forwarded_env()
            prep = _prepare.options(runtime_env={"env_vars": _runtime_env_vars(env)}).remote(
                spec.environment, env
            )
        watcher.add(folder, spec, prep)
        return watcher


#: Seconds the cluster's total resources, as Ray last said, are used to check a job.
CLUSTER_TTL_S = 5.0

_cluster_lock = threading.Lock()
#: (this Ray connection's job and node ids, when asked (monotonic seconds), the totals)
_cluster: list[tuple[tuple[str, str], float, dict[str, float]]] = []


def _cluster_resources(fresh: bool) -> dict[str, float]:
    """The cluster's total resources: asked of Ray (a GCS round trip, ~2 ms), or as it said
    within :data:`CLUSTER_TTL_S` on this connection (a Ray started again is asked again)."""
    context = ray.get_runtime_context()
    key = (context.get_job_id(), context.get_node_id())
    now = time.monotonic()
    with _cluster_lock:
        known = _cluster[0] if _cluster else None
    if not fresh and known is not None and known[0] == key and now - known[1] < CLUSTER_TTL_S:
        return known[2]
    totals = {k: float(v) for k, v in ray.cluster_resources().items()}
    with _cluster_lock:
        _cluster[:] = [(key, now, totals)]
    return totals


def _node_count(cluster: dict[str, float]) -> float:
    """How many nodes the cluster's totals name (each has a ``node:<address>`` resource of 1)."""
    return sum(v for k, v in cluster.items() if k.startswith("node:") and "__" not in k)


def _lacking(resources: Resources, cluster: dict[str, float]) -> tuple[str, float, float] | None:
    """(what, asked, the cluster's total) of the first resource the cluster lacks, or None."""
    for what, asked, key in (
        ("GPU(s)", resources.gpus, "GPU"),
        ("CPU(s)", resources.cpus, "CPU"),
        ("bytes of memory", resources.memory_bytes, "memory"),
    ):
        have = cluster.get(key, 0)
        if asked > have:
            return what, asked, have
    return None


def check_task(handle: Any, folder: JobFolder) -> None:
    """Record a job failed when the watcher supervising it stopped on an error."""
    if isinstance(handle, Watcher):
        handle.check(folder)
