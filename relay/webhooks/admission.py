"""Whether a claimed delivery may be attempted now: its origin's slot, breaker and rate limit.

In this order, so that nothing is spent on a delivery that will not go out:

1. a free in-flight slot of the origin (waited for in this process up to ``BUSY_WAIT_S``, well
   inside the lease, so a burst to one origin costs no Redis round trips). Behind a *slow* origin
   (no attempt of it ended in the last ``FLOWING_S``) at most ``max_waiting`` deliveries wait
   (the per-origin limit again) and the rest are deferred at once, so a hanging origin holds at
   most twice its limit of the process's ``RELAY_WEBHOOK_MAX_IN_FLIGHT`` delivery tasks and never
   starves the others;
2. the origin's breaker is not blocking (open, or half-open with its probe out);
3. a send time from the shared rate limiter, at most ``RATE_MAX_WAIT_S`` ahead (slept here;
   woken too late for it, a new one is reserved, up to ``MAX_LATE_RESERVATIONS`` times);
4. the breaker admits the attempt (in half-open, as the probe or one of the trial).

Before all of it, an origin without a success in the last ``PROVEN_FOR_S`` (an *unproven*
origin: new, or one that only hangs or fails) takes a slot only while the slots of all unproven
origins together number fewer than ``max_unproven`` (``RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT``);
else it is deferred by ``UNPROVEN_DEFER_S``. It never waits in the process for a slot of its
own either (deferred by ``BUSY_DEFER_S``), so its deliveries hold no more tasks than slots. A
producer naming many distinct origins that never answer thus holds at most that many of the
process's delivery tasks, each for a timeout, and proven origins always have the rest.

A delivery that may not go is deferred by the caller, without using up an attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.webhooks.breaker import EndpointGuards
from relay.webhooks.ratelimit import RateLimiter

BUSY_WAIT_S = 5.0
BUSY_DEFER_S = 0.5
RATE_MAX_WAIT_S = 1.0
MAX_LATE_RESERVATIONS = 3
FLOWING_S = 1.0
MAX_TRACKED_RELEASES = 10_000
# An origin is proven while its last success is younger than this.
PROVEN_FOR_S = 600.0
MAX_TRACKED_PROVEN = 10_000
UNPROVEN_DEFER_S = 2.0

Refusal = Literal["busy", "circuit_open", "rate_limited", "unproven"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``go``: attempt now (the origin's slot is held until :meth:`release`); else defer."""

    go: bool
    defer_s: float = 0.0
    reason: Refusal | None = None
    waited_s: float = 0.0  # time slept for a rate-limit slot


class EndpointAdmission:
    """Slots, breakers and rate limits of every origin, for one process."""

    def __init__(
        self,
        guards: EndpointGuards,
        limiter: RateLimiter | None,
        *,
        max_waiting: int,
        max_unproven: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guards = guards
        self._limiter = limiter
        self._max_waiting = max_waiting
        self._max_unproven = max_unproven
        self._clock = clock
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        self._released_at: dict[str, float] = {}
        self._succeeded_at: OrderedDict[str, float] = OrderedDict()
        self._unproven_held: dict[str, int] = {}  # per unproven origin: admissions open
        self.unproven_in_flight = 0  # their sum

    def succeeded(self, origin: str) -> None:
        """An attempt to ``origin`` succeeded: it is proven for ``PROVEN_FOR_S``."""
        self._succeeded_at[origin] = self._clock()
        self._succeeded_at.move_to_end(origin)
        while len(self._succeeded_at) > MAX_TRACKED_PROVEN:
            self._succeeded_at.popitem(last=False)

    def proven(self, origin: str) -> bool:
        at = self._succeeded_at.get(origin)
        return at is not None and self._clock() - at < PROVEN_FOR_S

    async def admit(self, origin: str) -> Verdict:
        """Decide; a ``RedisError`` from the limiter propagates with no slot held. An unproven
        origin's slot counts against ``max_unproven`` until :meth:`release`; it never waits in
        the process for a slot of its own (it is deferred), so its deliveries hold no more
        delivery tasks than slots."""
        unproven = not self.proven(origin)
        if unproven:
            if self.unproven_in_flight >= self._max_unproven:
                return Verdict(False, UNPROVEN_DEFER_S, "unproven")
            if not self.guards.has_capacity(origin):
                return Verdict(False, BUSY_DEFER_S, "busy")
        return await self._admit(origin, unproven)

    def _hold_unproven(self, origin: str) -> None:
        self._unproven_held[origin] = self._unproven_held.get(origin, 0) + 1
        self.unproven_in_flight += 1

    def _drop_unproven(self, origin: str) -> None:
        held = self._unproven_held.get(origin, 0)
        if held <= 0:
            return
        self.unproven_in_flight -= 1
        if held == 1:
            del self._unproven_held[origin]
        else:
            self._unproven_held[origin] = held - 1

    async def _admit(self, origin: str, unproven: bool) -> Verdict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_WAIT_S
        while not self.guards.has_capacity(origin):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._queue_full(origin, loop.time()):
                return Verdict(False, BUSY_DEFER_S, "busy")
            if not await self._capacity_freed(origin, remaining):
                return Verdict(False, BUSY_DEFER_S, "busy")
        breaker = self.guards.breaker(origin)
        blocked = breaker.blocked_for_s()
        if blocked > 0:
            return Verdict(False, blocked, "circuit_open")
        self.guards.acquire(origin)
        if unproven:
            self._hold_unproven(origin)
        try:
            waited = 0.0
            if self._limiter is not None:
                refusal = await self._wait_for_send_slot(self._limiter, origin)
                if isinstance(refusal, Verdict):
                    self.release(origin)
                    return refusal
                waited = refusal
            if not breaker.allow():
                self.release(origin)
                return Verdict(False, breaker.blocked_for_s(), "circuit_open")
        except BaseException:
            self.release(origin)
            raise
        return Verdict(True, waited_s=waited)

    async def _wait_for_send_slot(self, limiter: RateLimiter, origin: str) -> Verdict | float:
        """Sleep until a reserved send time; the time slept, or a deferral."""
        waited = 0.0
        for _ in range(MAX_LATE_RESERVATIONS):
            reservation = await limiter.reserve(origin, RATE_MAX_WAIT_S)
            if not reservation.granted:
                return Verdict(False, reservation.wait_s, "rate_limited")
            delay = reservation.send_at - time.time() if reservation.wait_s > 0 else 0.0
            if delay > 0:
                await asyncio.sleep(min(delay, RATE_MAX_WAIT_S))
                waited += delay
            if reservation.wait_s <= 0 or time.time() - reservation.send_at <= (
                reservation.tolerance_s
            ):
                return waited
        return Verdict(False, 0.0, "rate_limited")

    def _queue_full(self, origin: str, now: float) -> bool:
        """Whether one more delivery may not wait for ``origin``: ``max_waiting`` already do and
        no attempt of it ended in the last ``FLOWING_S`` (a slow origin, not a busy one)."""
        queue = self._waiters.get(origin)
        if queue is None or len(queue) < self._max_waiting:
            return False
        return now - self._released_at.get(origin, -FLOWING_S) >= FLOWING_S

    def release(self, origin: str) -> None:
        """The attempt is over: free the slot and wake one delivery waiting for it."""
        self._free_slot(origin)
        self._drop_unproven(origin)

    def _free_slot(self, origin: str) -> None:
        self.guards.release(origin)
        if len(self._released_at) >= MAX_TRACKED_RELEASES:
            self._released_at.clear()  # a memory bound; at worst a few deliveries are deferred
        self._released_at[origin] = asyncio.get_running_loop().time()
        waiters = self._waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._waiters.pop(origin, None)

    async def _capacity_freed(self, origin: str, timeout_s: float) -> bool:
        """``True`` when a slot of ``origin`` was released within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.setdefault(origin, deque()).append(waiter)
        expiry = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            expiry.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
