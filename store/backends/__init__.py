"""Backends, looked up by name from a table of dotted paths so optional dependencies load lazily."""

from __future__ import annotations

import importlib
from typing import Any

from store.backend import Backend
from store.errors import InvalidArgumentError, NotInstalledError

#: backend name -> ("module:factory", extra that installs its dependencies)
REGISTRY: dict[str, tuple[str, str | None]] = {
    "embedded": ("store.backends.embedded.backend:EmbeddedBackend.open", None),
    "lakefs": ("store.backends.lakefs.backend:LakeFSBackend.from_config", "lakefs"),
}


def load_backend(name: str, **kwargs: Any) -> Backend:
    """Build the backend registered as ``name`` with ``kwargs``.

    Raises:
        InvalidArgumentError: no backend of that name.
        NotInstalledError: its optional dependencies are missing (the message names the extra).
    """
    try:
        target, extra = REGISTRY[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown backend {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except NotInstalledError:
        raise  # the backend's own message already names its packages and extra
    except ImportError as exc:
        hint = f"pip install 'flowlake[{extra}]'" if extra else "reinstall flowlake"
        missing = repr(exc.name) if exc.name else f"a package ({exc})"
        raise NotInstalledError(
            f"backend {name!r} needs the package {missing}, which is not installed: {hint}"
        ) from exc
    for part in attr.split("."):
        obj = getattr(obj, part)
    backend: Backend = obj(**kwargs)
    return backend
