"""The metric buffer: a list that the logging thread appends to and a flusher drains.

``log_metric`` must cost little more than a list append, so the hot path takes no lock: it
appends one tuple to a Python list. The flusher takes a prefix of the list and deletes exactly
that prefix; both are single list operations, atomic with respect to ``append`` (under the GIL,
and under the per-object locks of free-threaded builds), and only the flusher ever removes
items, so a point appended while a flush runs stays for the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from tracking import layout
from tracking.points import Point

__all__ = ["Flusher", "MetricBuffer", "Point", "to_table"]


class MetricBuffer:
    """Points logged but not yet written."""

    def __init__(self) -> None:
        self.points: list[Point] = []
        self.append: Callable[[Point], None] = self.points.append

    def __len__(self) -> int:
        return len(self.points)

    def drain(self) -> list[Point]:
        """Remove and return every point appended so far (never one appended meanwhile)."""
        n = len(self.points)
        chunk = self.points[:n]
        del self.points[:n]
        return chunk


_POINT = pa.struct(
    [("key", pa.string()), ("value", pa.float64()), ("step", pa.int64()), ("time", pa.float64())]
)


def to_table(run_id: str, points: list[Point]) -> pa.Table:
    """The points as a table of :data:`layout.METRICS_SCHEMA`.

    The whole chunk converts in one pass (tuples to an Arrow struct array), because the
    flusher holds the GIL while converting and every millisecond here is taken from the
    logging thread. Points were checked when logged (:func:`tracking.points.check_point`),
    so the conversion cannot fail on a value, step or timestamp.
    """
    struct = pa.array(points, type=_POINT)
    keys, values, steps, stamps = struct.flatten()
    micros = pc.cast(pc.multiply(stamps, 1e6), pa.int64(), safe=False)
    return pa.Table.from_arrays(
        [
            pa.repeat(run_id, len(points)).cast(pa.string()),
            keys,
            values,
            steps,
            micros.cast(pa.timestamp("us", tz="UTC")),
        ],
        schema=layout.METRICS_SCHEMA,
    )


class Flusher(threading.Thread):
    """Calls ``flush`` every ``interval`` seconds or when ``pressing()`` says the buffer is big,
    and ``beat`` every ``heartbeat_interval`` seconds, until stopped.

    A failing flush is kept in :attr:`error` and retried on the next tick; the run's final
    flush re-raises it if it still fails.
    """

    POLL_S = 0.05

    def __init__(
        self,
        flush: Callable[[], None],
        beat: Callable[[], None],
        pressing: Callable[[], bool],
        interval: float,
        heartbeat_interval: float,
    ) -> None:
        super().__init__(name="flowlake-run-flusher", daemon=True)
        self._flush, self._beat, self._pressing = flush, beat, pressing
        self._interval, self._heartbeat_interval = interval, heartbeat_interval
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (its current flush completes first)."""
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        import time

        last_flush = last_beat = time.monotonic()
        while not self._stop_event.wait(self.POLL_S):
            now = time.monotonic()
            if now - last_flush >= self._interval or self._pressing():
                last_flush = now
                self._guard(self._flush)
            if now - last_beat >= self._heartbeat_interval:
                last_beat = now
                self._guard(self._beat)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
            self.error = None
        except Exception as exc:  # kept and re-raised by the run's final flush
            self.error = exc
