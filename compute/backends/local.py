"""The ``local`` backend: jobs on this machine, scheduled against its GPUs, CPUs and memory.

Each job gets a detached supervisor process (:mod:`compute.supervise`) that waits for a
machine-wide lease (:mod:`compute.leases`), so jobs submitted by several processes share the
machine without oversubscribing it, and that outlives the process that submitted it.
Supervisors come from a preloaded fork server when one runs (:mod:`.local_forkserver`).
"""

from __future__ import annotations

import os
import subprocess
import sys

from compute import machine
from compute.backends import local_forkserver
from compute.errors import ResourceError
from compute.model import JobSpec, Resources
from compute.state import JobFolder


class LocalExecutor:
    """Runs jobs on this machine."""

    name = "local"

    def __init__(self) -> None:
        self.capacity = machine.detect()

    def check(self, resources: Resources) -> None:
        cap = self.capacity
        if resources.gpus > len(cap.gpus):
            have = f"{len(cap.gpus)} GPU(s)" if cap.gpus else "no GPU"
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            limited = "" if visible is None else f" visible (CUDA_VISIBLE_DEVICES={visible!r})"
            raise ResourceError(
                f"the job asks for {resources.gpus} GPU(s) but this machine has {have}{limited} "
                "(FLOWLAKE_GPUS overrides the detection)"
            )
        if resources.cpus > cap.cpus:
            raise ResourceError(
                f"the job asks for {resources.cpus:g} CPU(s) but this machine has {cap.cpus:g}"
            )
        if cap.memory and resources.memory_bytes > cap.memory:
            raise ResourceError(
                f"the job asks for {resources.memory_bytes} bytes of memory but this machine "
                f"has {cap.memory}"
            )

    def launch(self, folder: JobFolder, spec: JobSpec) -> subprocess.Popen[bytes] | None:
        """Start the job's supervisor: forked by this user's fork server when one runs
        (:mod:`compute.backends.local_forkserver`; returns None), else a fresh interpreter
        (returns its process)."""
        if local_forkserver.launch(folder.path, self.capacity) is not None:
            return None
        argv = [sys.executable, "-P", "-m", "compute.supervise", str(folder.path)]
        with open(folder.path / "supervisor.log", "ab") as log:
            return subprocess.Popen(
                [*argv, self.capacity.to_json()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
