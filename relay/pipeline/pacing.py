"""How many tasks may hold an event stream, and how often the others may poll.

Each open event stream holds a connection of the MindVideo pool for as long as its task runs, so
with thousands of tasks in flight streams alone would take every connection and starve submits.
``StreamSlots`` caps the streams held at once; a follower without a slot polls, and waits for a
slot up to its next poll, so a slot that frees up is taken at once (first come, first served).
``PollPacer`` spaces those polls: each task polls every ``max(poll interval, pollers / rate)``
seconds and all of them together at most ``rate`` times a second, so the cost of waiting stays
flat however many tasks wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]
POLL_JITTER = 0.1


class StreamSlots:
    """A counting limit with a timeout on waiting, handed over first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("at least one stream slot")
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._live_waiters = 0

    @property
    def waiting(self) -> int:
        return self._live_waiters

    def try_take(self) -> bool:
        if self.in_use < self.limit and not self._live_waiters:
            self.in_use += 1
            return True
        return False

    async def take(self, timeout_s: float) -> bool:
        """A slot within ``timeout_s`` (``True``), or ``False``; release it with ``give_back``."""
        if self.try_take():
            return True
        if timeout_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        self._live_waiters += 1
        expiry = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.give_back()  # handed a slot just as we were cancelled
            raise
        finally:
            expiry.cancel()
            self._live_waiters -= 1
            if len(self._waiters) > 2 * self._live_waiters + 64:
                self._waiters = deque(w for w in self._waiters if not w.done())

    def give_back(self) -> None:
        """Release a slot: to the longest waiting follower, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.in_use -= 1


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class PollPacer:
    """Per-task poll intervals that grow with the number of pollers, and a global poll rate."""

    def __init__(
        self,
        interval_s: float,
        max_polls_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._interval_s = interval_s
        self._spacing_s = 1.0 / max_polls_per_s
        self._max_per_s = max_polls_per_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._next_at = 0.0
        self.pollers = 0

    def interval_s(self) -> float:
        """How long one task waits between polls now, jittered so pollers do not march in step."""
        base = max(self._interval_s, self.pollers / self._max_per_s)
        return base * self._rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)

    async def turn(self) -> None:
        """Wait for this poll's turn: polls of all tasks are at least ``1 / rate`` apart."""
        now = self._clock()
        at = max(now, self._next_at)
        self._next_at = at + self._spacing_s
        if at > now:
            await self._sleep(at - now)
