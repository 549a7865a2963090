"""Event-loop lag: how late a periodic timer wakes, exported as ``relay_event_loop_lag_seconds``.

Everything the relay does shares one event loop: a callback that holds it (a large JSON encode,
a synchronous call, a burst of ready tasks) delays every submit, stream read, produce call and
webhook attempt behind it. A timer that asks to wake after ``interval_s`` and wakes later than
that measures exactly this wait, whatever caused it: the histogram's p99 under load is the delay
the loop adds to a result at the 99th percentile of wake-ups.

It is cheap by design: one sleeping task, ``1 / interval_s`` wake-ups a second (20 by default),
one histogram observation each. The clock is injectable for tests. Under uvloop, timers have a
resolution of one millisecond, so lags below a millisecond read as 0–1 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import Histogram

LOOP_LAG_INTERVAL_S = 0.05


class LoopLagMonitor:
    """Observes how late a timer wakes on the running loop, every ``interval_s``, until stopped."""

    def __init__(
        self,
        histogram: Histogram,
        *,
        interval_s: float = LOOP_LAG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._histogram = histogram
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start observing on the running loop (a second call while running does nothing)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop observing; returns once the timer task has ended."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Our own cancel() above, the normal way this task ends. A cancellation of the
            # caller itself still propagates: the caller's task keeps its cancel request.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        interval_s = self._interval_s
        while True:
            expected = self._clock() + interval_s
            await asyncio.sleep(interval_s)
            self._histogram.observe(max(0.0, self._clock() - expected))
