"""What a run records about the machine and interpreter it ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Environment:
    """The interpreter and installed distributions of the running process.

    Attributes:
        host: the machine's host name.
        pid: the process id.
        python_version: ``sys.version`` (first line).
        python_executable: ``sys.executable``.
        platform: ``platform.platform()``.
        packages: installed distributions as ``(name, version)``, sorted by name.
    """

    host: str
    pid: int
    python_version: str
    python_executable: str
    platform: str
    packages: tuple[tuple[str, str], ...]


def capture() -> Environment:
    """Describe this process's interpreter and its installed distributions."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        # The first distribution found on sys.path wins, as it does for imports.
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}\0{dist.version}"
    packages = tuple(
        (entry.split("\0")[0], entry.split("\0")[1]) for _, entry in sorted(seen.items())
    )
    return Environment(
        host=socket.gethostname(),
        pid=os.getpid(),
        python_version=sys.version.splitlines()[0],
        python_executable=sys.executable,
        platform=platform.platform(),
        packages=packages,
    )
