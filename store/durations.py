"""Durations as people type them: a number and a unit (``90s``, ``30m``, ``6h``, ``7d``, ``1w``).

One spelling for every duration flowlake reads from text (a token's lifetime, gc's retention),
so what one option accepts, the other accepts too.
"""

from __future__ import annotations

import re
from datetime import timedelta

from store.errors import InvalidArgumentError

#: The accepted spellings, for error messages and help texts.
FORMS = "a number and a unit: 90s, 30m, 6h, 7d or 1w"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"6h"`` -> 6 hours: a non-negative number (fractions allowed) and a unit, s, m, h, d or
    w. ``"0"`` alone is allowed (zero is zero in every unit); any other bare number is refused,
    never taken as seconds.

    Raises:
        InvalidArgumentError: not a number with a unit, or too long for a timedelta.
    """
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidArgumentError(f"{text!r} is not a duration; use {FORMS}")
    if not match[2] and float(match[1]) != 0:
        raise InvalidArgumentError(f"{text!r} has no unit; use {FORMS}")
    try:
        return timedelta(seconds=float(match[1]) * _SECONDS[match[2]])
    except OverflowError:
        raise InvalidArgumentError(f"{text!r} is too long a duration") from None
