"""What a run records about the machine and interpreter it ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import sys
from dataclasses import dataclass

from tracking import localcache


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


def capture(cache_dir: str | None = None) -> Environment:
    """Describe this process's interpreter and its installed distributions.

    Listing the distributions reads every one's metadata (over 100 ms for a hundred packages),
    so with ``cache_dir`` the list is kept there, keyed by the interpreter and by the names of
    the metadata folders (``*.dist-info``, ``*.egg-info``, ...) in every ``sys.path`` entry:
    installing, upgrading or removing a distribution changes those names (they hold name and
    version), and with them the key. Host, process and platform are read every time.

    Args:
        cache_dir: the local cache folder (see :mod:`tracking.localcache`), or None to list
            the distributions every time.
    """
    path = localcache.entry_path(cache_dir, "environment", _key()) if cache_dir else None
    cached = localcache.load(path) if path else None
    if _valid(cached):
        packages = tuple((str(n), str(v)) for n, v in cached)  # type: ignore[union-attr]
    else:
        packages = _distributions()
        if path:
            localcache.store(path, [list(p) for p in packages])
    return Environment(
        host=socket.gethostname(),
        pid=os.getpid(),
        python_version=sys.version.splitlines()[0],
        python_executable=sys.executable,
        platform=platform.platform(),
        packages=packages,
    )


def _distributions() -> tuple[tuple[str, str], ...]:
    seen: dict[str, tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        # The first distribution found on sys.path wins, as it does for imports.
        if name and name.lower() not in seen:
            seen[name.lower()] = (name, dist.version)
    return tuple(entry for _, entry in sorted(seen.items()))


def _key() -> str:
    """What the distribution list depends on: the interpreter, and in each ``sys.path`` entry
    the names of the distributions' metadata folders (they carry name and version, so an
    install, upgrade or removal changes them; other files coming and going do not)."""
    parts = [sys.executable, sys.version, sys.prefix]
    for entry in sys.path:
        parts.append(f"\0{entry}")
        try:
            with os.scandir(entry or ".") as listing:
                parts += sorted(e.name for e in listing if e.name.endswith(_METADATA_SUFFIXES))
        except NotADirectoryError:  # a zip archive: its modification time stands for it
            parts.append(str(_mtime(entry)))
        except OSError:
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".egg", ".pth")


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _valid(cached: object) -> bool:
    return isinstance(cached, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in cached
    )
