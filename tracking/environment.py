"""What a run records about the machine and interpreter it ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import sys
import time
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
            parts += _metadata_names(entry or ".")
        except NotADirectoryError:  # a zip archive: its modification time stands for it
            parts.append(str(_mtime(entry)))
        except OSError:
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


#: folder -> ((device, inode, mtime ns), its metadata folder names) of folders listed before.
_listed: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
#: A folder's listing is reused only when the folder last changed at least this long before it
#: was listed: a change within the file system's timestamp granularity of the listing would not
#: change the folder's modification time again.
SETTLED_NS = 2_000_000_000


def _metadata_names(folder: str) -> list[str]:
    """The sorted names of the distribution metadata entries in ``folder``.

    Installing, upgrading or removing a distribution adds or removes a name there, which
    changes the folder's modification time, so a listing is reused while the folder's identity
    and time are unchanged (and were settled when it was listed).

    Raises:
        OSError: the folder cannot be listed (NotADirectoryError for a file).
    """
    st = os.stat(folder)
    stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
    held = _listed.get(folder)
    if held is not None and held[0] == stamp:
        return held[1]
    with os.scandir(folder) as listing:
        names = sorted(e.name for e in listing if e.name.endswith(_METADATA_SUFFIXES))
    if time.time_ns() - st.st_mtime_ns >= SETTLED_NS:
        _listed[folder] = (stamp, names)
    return names


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
