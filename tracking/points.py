"""What a metric point may be: the one check every logger of metric points goes through.

A point is refused when it is logged, with an error naming the bad part, so nothing that cannot
be stored ever enters a buffer (one bad point must not make a later flush fail and take every
good point with it). Runs (:meth:`tracking.Run.log_metric`) and anything else that records
metric series call :func:`check_point`; :func:`metric_logger` wraps it in a fast path for the
common case.

Accepted:

* **key**: a non-empty ``str`` of at most :data:`MAX_KEY_CHARS` printable characters (no
  control or format characters, no lone surrogates: every key must encode as UTF-8).
* **value**: a real number: ``int``, ``float``, ``bool``, NumPy scalars, or a 0-d array or
  tensor (anything that is not text and has ``__float__``), stored as a 64-bit float. ``NaN``,
  ``inf`` and ``-inf`` are kept as they are (as MLflow keeps them); text, ``None``, complex
  numbers and integers too large for a float are refused.
* **step**: ``None`` or an integer (``int`` or a NumPy integer, not ``bool``) in the signed
  64-bit range.
* **timestamp**: ``None`` (now) or milliseconds since the Unix epoch, as MLflow takes them,
  between :data:`MIN_TIMESTAMP_MS` (2000-01-01) and :data:`MAX_TIMESTAMP_MS` (9999-12-31)
  UTC. A value in seconds, microseconds or nanoseconds falls outside that range and is
  refused with a message saying which unit it looks like, never stored as another date.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from typing import Any

from tracking.errors import InvalidMetricError

#: One checked point: key, value, step (or None), timestamp (Unix seconds).
Point = tuple[str, float, "int | None", float]

MAX_KEY_CHARS = 250
MIN_STEP = -(1 << 63)
MAX_STEP = (1 << 63) - 1
#: 2000-01-01T00:00:00Z in milliseconds.
MIN_TIMESTAMP_MS = 946_684_800_000
#: 9999-12-31T23:59:59.999Z in milliseconds.
MAX_TIMESTAMP_MS = 253_402_300_799_999

_EXACT = 1 << 53  # ints up to this convert to float exactly
_MAX_KNOWN_KEYS = 100_000  # keys remembered as checked: bounds memory for generated keys


def check_key(key: Any) -> str:
    """The metric name, checked (see the module docstring).

    Raises:
        InvalidMetricError: not a non-empty printable string of at most 250 characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidMetricError(f"a metric key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidMetricError(
            f"metric key {key[:40]!r}... is {len(key)} characters; at most {MAX_KEY_CHARS}"
        )
    if not key.isprintable():
        raise InvalidMetricError(
            f"metric key {key!r} holds control, format or unencodable characters"
        )
    return key


def check_value(value: Any, key: str = "") -> float:
    """The value as a float (NaN and infinities kept).

    Raises:
        InvalidMetricError: not a real number, or an integer too large for a float.
    """
    if value.__class__ is float:
        return value  # type: ignore[no-any-return]
    complex_ = isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)
    if complex_ or not hasattr(value, "__float__"):  # text has no __float__
        raise InvalidMetricError(f"metric {key!r}: value {value!r} is not a real number")
    try:
        return float(value)
    except OverflowError:
        raise InvalidMetricError(
            f"metric {key!r}: value {value!r} is too large for a 64-bit float"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidMetricError(
            f"metric {key!r}: value {value!r} is not a real number ({exc})"
        ) from None


def check_step(step: Any, key: str = "") -> int | None:
    """The step as an int, or None.

    Raises:
        InvalidMetricError: not an integer, or outside the signed 64-bit range.
    """
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise InvalidMetricError(f"metric {key!r}: step {step!r} is not an integer")
    number = int(step)
    if not MIN_STEP <= number <= MAX_STEP:
        raise InvalidMetricError(
            f"metric {key!r}: step {number} is outside the 64-bit integer range "
            f"[{MIN_STEP}, {MAX_STEP}]"
        )
    return number


def check_timestamp_ms(timestamp: Any, key: str = "") -> float:
    """Milliseconds since the epoch as Unix seconds.

    Raises:
        InvalidMetricError: not a finite real number, or outside 2000-01-01 .. 9999-12-31 UTC
            (the message names the unit the value looks like).
    """
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Real):
        raise InvalidMetricError(
            f"metric {key!r}: timestamp {timestamp!r} is not a number of milliseconds"
        )
    ms = float(timestamp)
    if math.isnan(ms) or not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise InvalidMetricError(
            f"metric {key!r}: timestamp {timestamp!r} is not milliseconds since the Unix epoch "
            f"between 2000-01-01 and 9999-12-31 UTC{_unit_hint(ms)}"
        )
    return ms / 1000


def _unit_hint(ms: float) -> str:
    now_ms = time.time() * 1000
    for unit, scale in (("nanoseconds", 1e6), ("microseconds", 1e3), ("seconds", 1e-3)):
        if 0.5 * now_ms * scale <= ms <= 2 * now_ms * scale:
            return f"; it looks like {unit} (pass milliseconds, e.g. time.time_ns() // 1_000_000)"
    return ""


def check_point(
    key: Any,
    value: Any,
    step: Any = None,
    timestamp: Any = None,
    now: Callable[[], float] = time.time,
) -> Point:
    """One point, checked and normalised: ``(key, float value, step, Unix seconds)``.

    Args:
        key, value, step: as described in the module docstring.
        timestamp: milliseconds since the epoch, or None for ``now()``.
        now: the clock (Unix seconds) for points without a timestamp.

    Raises:
        InvalidMetricError: any part is not accepted; the message names it.
    """
    name = check_key(key)
    return (
        name,
        check_value(value, name),
        check_step(step, name),
        now() if timestamp is None else check_timestamp_ms(timestamp, name),
    )


def metric_logger(
    append: Callable[[Point], None],
) -> tuple[Callable[..., None], Callable[[Callable[[Point], None]], None]]:
    """A ``log_metric(key, value, step=None, timestamp=None)`` function appending checked
    points to ``append``, and a function that replaces ``append`` (to refuse points once a run
    ends).

    The hot path is a closure rather than a method: reading ``append`` and the clock from
    cells skips the bound-method call and the attribute lookups. A point with a ``float`` value
    (or an ``int`` one exactly representable as a float, which Arrow converts exactly when the
    buffer is written), an in-range ``int`` step or none, no timestamp and a key already checked
    once is appended without calling :func:`check_point`; everything else goes through it.
    """
    now = time.time
    known: set[str] = set()
    lo, hi, exact = MIN_STEP, MAX_STEP, _EXACT  # closure cells: cheaper than globals

    def log_metric(key: str, value: Any, step: Any = None, timestamp: Any = None) -> None:
        # Only checked keys (all str) are in ``known``; an unhashable key takes the slow path.
        try:
            seen = key in known
        except TypeError:
            seen = False
        if (
            seen
            and timestamp is None
            and (step is None or (step.__class__ is int and lo <= step <= hi))
            and (
                value.__class__ is float
                # Arrow converts such an int to float64 exactly when the buffer is written.
                or (value.__class__ is int and -exact <= value <= exact)
            )
        ):
            append((key, value, step, now()))
            return
        point = check_point(key, value, step, timestamp, now)
        if len(known) < _MAX_KNOWN_KEYS:
            known.add(point[0])
        append(point)

    def replace(new: Callable[[Point], None]) -> None:
        nonlocal append
        append = new

    return log_metric, replace
