"""Temporary files that are renamed into place: created exclusively under names unique to the
process, the one way the embedded object store and the local cache make them.

As atomic as ``tempfile.mkstemp`` (``O_CREAT | O_EXCL``: never an existing file, never through
a symbolic link), without its random names and retries: the object store makes one per object.
"""

from __future__ import annotations

import itertools
import os
import threading

#: Unique within the process (pid and thread are in the name too); a name left by a killed
#: process with the same pid is skipped (``O_EXCL``).
_counter = itertools.count()

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def create(directory: str, prefix: str = "", suffix: str = "") -> tuple[int, str]:
    """A new file in ``directory`` opened for writing (mode 0o600, as ``mkstemp`` makes it) and
    its path, ``<directory>/<prefix><pid>-<thread>-<n><suffix>``; the folder is made when
    missing.

    Raises:
        OSError: the file cannot be created.
    """
    start = f"{directory}/{prefix}{os.getpid()}-{threading.get_ident()}-"
    for attempt in range(100):
        path = f"{start}{next(_counter)}{suffix}"
        try:
            return os.open(path, _FLAGS, 0o600), path
        except FileExistsError:
            continue
        except FileNotFoundError:
            if attempt:
                raise
            os.makedirs(directory, exist_ok=True)
    raise FileExistsError(f"no free temporary name in {directory}")
