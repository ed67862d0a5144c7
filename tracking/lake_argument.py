"""The check each public tracking function makes first on its ``lake`` argument.

A path or a branch where a Lake belongs (``tracking.sql("./lake", ...)``) would otherwise fail
deep inside with an ``AttributeError`` about an attribute the caller never named.
"""

from __future__ import annotations

from store.errors import InvalidArgumentError

#: At most this many characters of a wrong argument's repr are quoted in the error.
SHOWN_CHARS = 60


def require_lake(lake: object, function: str) -> None:
    """Refuse anything but a :class:`store.Lake` as the ``lake`` argument of ``function``.

    Args:
        lake: what the caller passed as ``lake``.
        function: the public name of the calling function, e.g. ``"tracking.sql"``.

    Raises:
        InvalidArgumentError: ``lake`` is not a Lake; the message names ``function`` and the
            type and value given (for a Branch: that its ``.lake`` is the Lake).
    """
    # Imported here: ``store.Lake`` loads lazily, and any caller holding a Lake has loaded it.
    from store.branch import Branch
    from store.lake import Lake

    if isinstance(lake, Lake):
        return
    shown = repr(lake)
    if len(shown) > SHOWN_CHARS:
        shown = shown[: SHOWN_CHARS - 3] + "..."
    kind = type(lake).__name__
    given = shown if lake is None or shown.startswith(f"{kind}(") else f"{kind} {shown}"
    hint = " (its .lake is the Lake)" if isinstance(lake, Branch) else ""
    raise InvalidArgumentError(f"{function} takes a Lake from store.open(...), not {given}{hint}")
