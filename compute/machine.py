"""What this machine offers to jobs: GPUs, CPU cores and memory.

GPUs come from NVML (``nvidia-ml-py``), else from ``nvidia-smi -L``, else none.
``FLOWLAKE_GPUS=0,1,2,3`` (or an empty value for none) overrides the detection, as
``FLOWLAKE_CPUS`` and ``FLOWLAKE_MEMORY`` (bytes or a size such as ``64GiB``) override the others:
for machines without a GPU (tests) or to keep part of a machine free.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from dataclasses import dataclass

from compute.errors import ResourceError
from compute.model import parse_memory

NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Capacity:
    """The resources jobs may share on a machine.

    Attributes:
        gpus: device ids (as ``CUDA_VISIBLE_DEVICES`` names them).
        cpus: CPU cores.
        memory: bytes; 0 when unknown (jobs' memory is then not limited).
    """

    gpus: tuple[int, ...]
    cpus: float
    memory: int

    def to_json(self) -> str:
        """A JSON form (how the local backend hands it to a job's supervisor)."""
        return json.dumps({"gpus": list(self.gpus), "cpus": self.cpus, "memory": self.memory})

    @classmethod
    def from_json(cls, text: str) -> Capacity:
        data = json.loads(text)
        return cls(tuple(int(g) for g in data["gpus"]), float(data["cpus"]), int(data["memory"]))


def detect() -> Capacity:
    """This machine's capacity, with the ``FLOWLAKE_*`` overrides applied.

    Raises:
        ResourceError: an override is malformed.
    """
    return Capacity(detect_gpus(), _cpus(), _memory())


def detect_gpus() -> tuple[int, ...]:
    """GPU ids: ``FLOWLAKE_GPUS``, else NVML, else ``nvidia-smi``, else none; outside a job,
    only those the submitter's ``CUDA_VISIBLE_DEVICES`` lists, when it lists ids."""
    override = os.environ.get("FLOWLAKE_GPUS")
    if override is not None:
        try:
            ids = tuple(int(part) for part in override.split(",") if part.strip())
        except ValueError:
            raise ResourceError(
                f"FLOWLAKE_GPUS={override!r} must list device ids, e.g. 0,1,2,3"
            ) from None
        if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
            raise ResourceError(f"FLOWLAKE_GPUS={override!r} lists a negative or repeated id")
        return ids
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # In a job, flowlake set it to the job's own devices: a job it submits is not bound to them.
    if visible is None or os.environ.get("FLOWLAKE_JOB_ID"):
        return _hardware_gpus()
    return visible_gpus(visible, _hardware_gpus())


def visible_gpus(visible: str, hardware: tuple[int, ...]) -> tuple[int, ...]:
    """The devices of ``hardware`` that ``CUDA_VISIBLE_DEVICES=visible`` leaves visible, so a
    user given some GPUs of a shared machine has jobs scheduled on those only.

    As CUDA reads it: ids in order, up to the first negative one (``""``, ``"-1"``: none).
    Entries that are not ids (``GPU-<uuid>``, ``MIG-...``) are not understood here: then every
    device of ``hardware`` (set ``FLOWLAKE_GPUS`` to choose).
    """
    ids: list[int] = []
    for part in visible.split(","):
        try:
            device = int(part.strip())
        except ValueError:
            if not part.strip():
                continue
            return hardware
        if device < 0:
            break
        if device in hardware and device not in ids:
            ids.append(device)
    return tuple(ids)


@functools.cache
def _hardware_gpus() -> tuple[int, ...]:
    """The GPUs NVML or ``nvidia-smi`` report, asked once per process (about 10 ms each time,
    paid by every submit otherwise)."""
    count = _nvml_count()
    if count is None:
        count = _nvidia_smi_count()
    return tuple(range(count or 0))


def _nvml_count() -> int | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: pynvml raises its own NVMLError subclasses
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvidia_smi_count() -> int | None:
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return len(re.findall(rb"^GPU \d+", done.stdout, flags=re.M))


def _cpus() -> float:
    override = os.environ.get("FLOWLAKE_CPUS")
    if override:
        try:
            value = float(override)
        except ValueError:
            raise ResourceError(f"FLOWLAKE_CPUS={override!r} is not a number") from None
        if not (0 < value < math.inf):  # NaN or inf would make every job wait forever
            raise ResourceError(f"FLOWLAKE_CPUS={override!r} must be a positive, finite number")
        return value
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return float(os.cpu_count() or 1)


def _memory() -> int:
    override = os.environ.get("FLOWLAKE_MEMORY")
    if override:
        try:
            return parse_memory(int(override) if override.isdigit() else override)
        except ResourceError as exc:  # say where the bad size came from
            raise ResourceError(f"FLOWLAKE_MEMORY={override!r}: {exc}") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
