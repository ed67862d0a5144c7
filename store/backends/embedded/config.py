"""A lake folder's configuration, ``flowlake.json``: format version and object location.

A lake folder is self-contained: its objects default to ``objects/`` inside it, recorded as the
*relative* path ``"objects"``, so a moved lake keeps reading and a copied lake (a backup) is
independent of the original. An object location given explicitly (``s3://bucket/x``, or a
local folder outside the lake) is recorded as given and marks the lake's objects *external*:
other lakes, or copies of this one, may share that location, so gc there needs the caller's
word that nobody else uses it.

Lakes written before relative locations recorded the absolute path of their own ``objects/``
folder. Such a path is read as the lake's own folder when it is ``<lake>/objects``, or when the
lake was moved or copied since (the recorded path ends in ``objects`` and ``<lake>/objects``
exists), and the file is rewritten with the relative form when the folder is writable.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from store.backends.embedded import layout
from store.errors import InvalidArgumentError

CONFIG_FILE = "flowlake.json"
DEFAULT_OBJECTS = "objects"


@dataclass(frozen=True)
class LakeConfig:
    """Where a lake's objects are.

    Attributes:
        objects: an absolute local path or an fsspec URL.
        external: True when the location is not the lake's own ``objects/`` folder.
    """

    objects: str
    external: bool


def recorded_form(root: str, objects: str | None) -> str:
    """What ``flowlake.json`` records for a requested object location (None: the default)."""
    if objects is None:
        return DEFAULT_OBJECTS
    local = _local_path(objects)
    if local is None:
        return objects
    if local == os.path.join(root, DEFAULT_OBJECTS):
        return DEFAULT_OBJECTS
    return local


def create(root: str, objects: str | None, reserved: tuple[str, ...]) -> None:
    """Write a new lake's configuration in folder ``root`` (made when absent).

    Raises:
        InvalidArgumentError: the folder holds files other than a lake's (``reserved`` names).
    """
    os.makedirs(root, exist_ok=True)
    ours = (CONFIG_FILE, f".{CONFIG_FILE}", DEFAULT_OBJECTS, *reserved)
    if any(not name.startswith(ours) for name in os.listdir(root)):
        raise InvalidArgumentError(f"folder {root} is not empty and holds no lake")
    recorded = recorded_form(root, objects)
    if os.path.isabs(recorded):
        os.makedirs(recorded, exist_ok=True)  # a new external local folder
    _write(root, recorded, replace=False)


def load(root: str) -> LakeConfig:
    """Read (and, for an old absolute own location, migrate) the configuration of a lake.

    Raises:
        InvalidArgumentError: the file is unreadable, of an unknown format, or names an
            external local folder that does not exist.
    """
    path = os.path.join(root, CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
        recorded = config["objects"]
        if not isinstance(recorded, str) or not recorded:
            raise ValueError("no object location")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"lake at {root}: {path} is unreadable: {exc}") from None
    if config.get("format") != layout.FORMAT_VERSION:
        raise InvalidArgumentError(f"lake at {root} has unknown format {config.get('format')}")
    own = os.path.join(root, DEFAULT_OBJECTS)
    if "://" in recorded and not recorded.startswith("file://"):
        return LakeConfig(recorded, external=True)
    local = recorded.removeprefix("file://")
    if not os.path.isabs(local):
        resolved = os.path.normpath(os.path.join(root, local))
        inside = resolved == own or resolved.startswith(own + os.sep)
        return LakeConfig(resolved, external=not inside)
    local = os.path.normpath(local)
    if local == own or (os.path.basename(local) == DEFAULT_OBJECTS and os.path.isdir(own)):
        with contextlib.suppress(OSError):  # a read-only lake still opens
            _write(root, DEFAULT_OBJECTS, replace=True)
        return LakeConfig(own, external=False)
    if not os.path.isdir(local):
        raise InvalidArgumentError(
            f"lake at {root} keeps its objects at {local}, which does not exist (moved?)"
        )
    return LakeConfig(local, external=True)


def same_location(config: LakeConfig, requested: str) -> bool:
    """Whether ``requested`` (as a user passes it to open) names the lake's object location."""
    local = _local_path(requested)
    return (requested if local is None else local) == config.objects


def _local_path(location: str) -> str | None:
    """The normalised local path of a location, or None for a remote URL."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif "://" in location:
        return None
    return os.path.abspath(location)


def _write(root: str, objects: str, replace: bool) -> None:
    tmp = os.path.join(root, f".{CONFIG_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({"format": layout.FORMAT_VERSION, "objects": objects}, f)
        f.flush()
        os.fsync(f.fileno())
    final = os.path.join(root, CONFIG_FILE)
    if replace or not os.path.exists(final):
        os.replace(tmp, final)
    else:
        os.unlink(tmp)
