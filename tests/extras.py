"""Optional dependencies (the package's extras) for test modules that need one.

Outside CI a module whose extra is not installed is skipped, with the command that installs it
(a GPU machine with only the core dependencies can still run ``pytest -m gpu tests/``). Under CI,
where ``make test`` installs every extra, a missing one fails instead of hiding the module's
tests behind a skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def import_extra(module: str, extra: str) -> ModuleType:
    """``module`` imported; outside CI the calling test module is skipped when it is missing.

    Raises:
        ImportError: under CI (``CI`` is 1, true or yes), when the module is missing.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return importlib.import_module(module)
    return pytest.importorskip(
        module, reason=f"needs the {extra!r} extra: pip install -e '.[{extra}]'"
    )
