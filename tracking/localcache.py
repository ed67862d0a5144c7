"""Small local caches that spare a run repeated work: never the source of truth.

What a run records is always recomputed when a cache entry is missing, unreadable or stale, so
deleting the cache folder at any moment only costs time. Entries are JSON files written under a
temporary name and renamed, so a reader (another process, too) sees a whole entry or none. An
entry whose bytes are unchanged is not written again, and entries that change with every run are
kept under a new name each time (see :func:`remove`): on ext4, renaming over an existing file
makes the kernel write the new file's data out at once (``auto_da_alloc``), about 1-2 ms.
Entries read are kept decoded in memory with the bytes they were decoded from: a later read
still reads the file, and decodes it again only when its bytes differ (comparing bytes costs a
small fraction of decoding JSON, and unlike a file's size and time it cannot miss a rewrite).

The folder is ``$FLOWLAKE_CACHE_DIR``, else ``~/.cache/flowlake``; callers pass it in (see
:func:`tracking.start_run`), and tests give their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from typing import Any

from store import tempfiles

#: Bumped when the shape of an entry changes; old entries are then simply not found.
CACHE_VERSION = 1
#: Entries kept decoded in memory (a run reads about four; the code hashes of a large project
#: are the largest, a few hundred kB of JSON).
MEMO_ENTRIES = 64

_memo: OrderedDict[str, tuple[bytes, Any]] = OrderedDict()
_memo_lock = threading.Lock()


def cache_root() -> str:
    """The cache folder: ``$FLOWLAKE_CACHE_DIR``, else ``~/.cache/flowlake``."""
    return os.environ.get("FLOWLAKE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "flowlake"
    )


def entry_path(root: str, kind: str, key: str) -> str:
    """Where entry ``key`` (a hex digest) of ``kind`` lives under ``root``."""
    return os.path.join(root, "runs", f"v{CACHE_VERSION}", kind, f"{key}.json")


def load(path: str) -> Any | None:
    """The entry at ``path``, or None when it is missing or unreadable.

    The value may be shared with other callers (it is decoded once per version of the file):
    treat it as read-only.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    with _memo_lock:
        held = _memo.get(path)
        if held is not None and held[0] == raw:
            _memo.move_to_end(path)
            return held[1]
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    with _memo_lock:
        _memo[path] = (raw, value)
        _memo.move_to_end(path)
        while len(_memo) > MEMO_ENTRIES:
            _memo.popitem(last=False)
    return value


def store(path: str, value: Any) -> None:
    """Write an entry atomically, unless the file holds these very bytes already; a failure
    (read-only home, full disk) is ignored: a cache that cannot be written only costs the next
    run the work again."""
    # dumps, not dump: dump encodes piece by piece in Python, dumps in C.
    raw = json.dumps(value, separators=(",", ":")).encode("utf-8")
    try:
        with open(path, "rb") as f:
            if f.read() == raw:
                return
    except OSError:
        pass
    folder = os.path.dirname(path)
    try:
        fd, tmp = tempfiles.create(folder, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def remove(path: str) -> None:
    """Delete an entry (one that is gone already is fine)."""
    with _memo_lock:
        _memo.pop(path, None)
    with contextlib.suppress(OSError):
        os.unlink(path)
