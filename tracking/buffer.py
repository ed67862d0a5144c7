"""The metric buffer: a list that the logging thread appends to and a flusher drains.

``log_metric`` must cost little more than a list append, so the hot path takes no lock: it
appends one tuple to a Python list. The flusher takes a prefix of the list and deletes exactly
that prefix; both are single list operations, atomic with respect to ``append`` (under the GIL,
and under the per-object locks of free-threaded builds), and only the flusher ever removes
items, so a point appended while a flush runs stays for the next one.
"""

from __future__ import annotations

import os
import threading
import time
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


class Flusher:
    """Calls ``flush`` every ``interval`` seconds or when ``pressing()`` says the buffer is big,
    and ``beat`` every ``heartbeat_interval`` seconds, from :meth:`start` until :meth:`stop`.

    Every flusher of a process is served by one daemon thread, the process's :class:`_Ticker`,
    so starting and ending a run or a deployment starts and joins no thread (a thread per run
    cost more than a millisecond of an empty run on a busy machine); the flushers of one process
    take their turns. A failing flush is kept in :attr:`error` and retried on the next tick;
    the run's final flush re-raises it if it still fails.
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
        self._flush, self._beat, self._pressing = flush, beat, pressing
        self._interval, self._heartbeat_interval = interval, heartbeat_interval
        # Held while the ticker runs this flusher's actions: stop() waits on it.
        self._running = threading.Lock()
        self._stopped = False
        self._last_flush = self._last_beat = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start calling ``flush`` and ``beat`` from the process's ticker thread."""
        self._last_flush = self._last_beat = time.monotonic()
        _TICKER.add(self)

    def stop(self) -> None:
        """Stop the calls and wait for one in progress (its current flush completes first).

        Called from one of this flusher's own actions, it does not wait for itself.
        """
        self._stopped = True
        _TICKER.discard(self)
        if _TICKER.is_ticker_thread():
            return
        with self._running:
            pass

    def tick(self, now: float) -> None:
        """Called by the ticker every :attr:`POLL_S` seconds: flush and beat when due."""
        with self._running:
            if self._stopped:
                return
            if now - self._last_flush >= self._interval or self._pressing():
                self._last_flush = now
                self._guard(self._flush)
            if now - self._last_beat >= self._heartbeat_interval:
                self._last_beat = now
                self._guard(self._beat)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
            self.error = None
        except Exception as exc:  # kept and re-raised by the run's final flush
            self.error = exc


class _Ticker:
    """The one daemon thread of a process that ticks every started :class:`Flusher`.

    It starts with the first flusher and ends once none has been left for :attr:`IDLE_S`
    seconds (the next start makes a new one); a forked child starts its own.
    """

    IDLE_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushers: list[Flusher] = []
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, flusher: Flusher) -> None:
        with self._lock:
            self._flushers.append(flusher)
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="flowlake-flusher", daemon=True
                )
                self._thread.start()

    def discard(self, flusher: Flusher) -> None:
        with self._lock:
            self._flushers = [f for f in self._flushers if f is not flusher]

    def is_ticker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            time.sleep(Flusher.POLL_S)
            now = time.monotonic()
            with self._lock:
                flushers = list(self._flushers)
                if not flushers:
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= self.IDLE_S:
                        self._thread = None  # the next add() starts a new thread
                        return
                    continue
            idle_since = None
            for flusher in flushers:
                try:
                    flusher.tick(now)
                except Exception as exc:  # one flusher's fault must not stop the others'
                    flusher.error = exc

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread and lock are not this process's."""
        self._lock = threading.Lock()
        self._flushers = []
        self._thread = None


_TICKER = _Ticker()
os.register_at_fork(after_in_child=_TICKER._after_fork)
