"""Per-origin circuit breakers: shed dead endpoints, keep delivering to degraded ones.

Every attempt is one of three kinds: ``ok`` (the endpoint answered sanely: 2xx, 410, or a 4xx
other than 429), ``error`` (it answered 5xx or 429: up, but failing) or ``unanswered``
(connection refused or reset, DNS failure, timeout: nobody is there). A closed breaker opens

* when at least ``unanswered_ratio`` of the last ``window_s`` seconds' attempts went unanswered,
  once there were at least ``min_requests`` of them (an endpoint that is not there), or
* when nothing at all succeeded for ``no_success_s`` seconds while at least ``min_requests``
  attempts failed (an endpoint that answers, but only with errors).

A short run of failures from an endpoint that still succeeds opens neither: 5xx answers alone
never trip the ratio, and one success restarts the no-success clock.

Open, it lets nothing through for a cool-down. Then it is half-open: one probe goes out; if it
fails the breaker opens again, otherwise up to ``min_requests`` trial attempts go out and the
breaker closes as soon as enough of them were answered that the unanswered share can no longer
reach the ratio (it re-opens if it does). Each trip without a success in between doubles the
cool-down, up to ``max_cooldown_s``; a success resets it. State is per process: each relay learns
an endpoint's health from its own attempts, so each sends at most one probe per cool-down.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

MAX_TRACKED_ORIGINS = 10_000
HALF_OPEN_RECHECK_S = 1.0

AttemptHealth = Literal["ok", "error", "unanswered"]


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    unanswered_ratio: float = 0.8
    min_requests: int = 10
    window_s: float = 60.0
    no_success_s: float = 60.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = 600.0


Listener = Callable[[BreakerState, BreakerState, str], None]
"""Called on every state change with (old, new, reason)."""


class CircuitBreaker:
    """Closed → open → half-open → closed, on a monotonic ``clock`` a test can drive."""

    def __init__(
        self,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._listener = listener
        self._state = BreakerState.CLOSED
        # Per-second buckets [second, attempts, unanswered, ok] with running totals: O(1) records.
        self._window: deque[list[int]] = deque()
        self._attempts = self._unanswered = self._ok = 0
        self._failing_since: float | None = None
        self._failures_since_ok = 0
        self._trips = 0
        self._cooldown_s = config.cooldown_s
        self._open_until = 0.0
        self._probe_at: float | None = None  # the half-open probe in flight
        self._trial: list[int] | None = None  # half-open trial: [admitted, answered, unanswered]
        self._trial_at = 0.0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def cooldown_s(self) -> float:
        """The cool-down of the current (or next) opening."""
        return self._cooldown_s

    def window_counts(self) -> tuple[int, int]:
        """(attempts, ok) over the window, for the status page's success rate."""
        self._prune(self._clock())
        return self._attempts, self._ok

    def blocked_for_s(self) -> float:
        """0 when an attempt may go now; else roughly how long until one may (no side effects)."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        if self._trial is None:
            lost = self._probe_at is None or now >= self._probe_at + self._cooldown_s
            return 0.0 if lost else HALF_OPEN_RECHECK_S
        if self._trial[0] < self._config.min_requests or now >= self._trial_at + self._cooldown_s:
            return 0.0
        return HALF_OPEN_RECHECK_S

    def allow(self) -> bool:
        """Whether an attempt may go out now. Half-open: one probe, then a bounded trial."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self._set(BreakerState.HALF_OPEN, "cool-down over")
            self._probe_at, self._trial = None, None
        if self._trial is None:
            # A probe whose outcome never came (its task was cancelled) stops blocking after a
            # cool-down, so at most one probe goes out per cool-down.
            if self._probe_at is not None and now < self._probe_at + self._cooldown_s:
                return False
            self._probe_at = now
            return True
        if self._trial[0] >= self._config.min_requests:
            if now < self._trial_at + self._cooldown_s:
                return False
            self._trial[0] = self._trial[1] + self._trial[2]  # outcomes lost: admit again
        self._trial[0] += 1
        self._trial_at = now
        return True

    def record(self, health: AttemptHealth, error: str | None = None) -> None:
        """The outcome of an attempt this breaker allowed."""
        now = self._clock()
        self._count(now, health)
        if health == "ok":
            self._trips, self._cooldown_s = 0, self._config.cooldown_s
            self._failing_since, self._failures_since_ok = None, 0
        else:
            if self._failing_since is None:
                self._failing_since = now
            self._failures_since_ok += 1
            self.last_error, self.last_error_at = error, time.time()
        if self._state is BreakerState.HALF_OPEN:
            self._judge_half_open(now, health)
        elif self._state is BreakerState.CLOSED:
            reason = self._trip_reason(now)
            if reason:
                self._open(now, reason)
        # OPEN: a late outcome of an attempt started before the trip changes nothing.

    def _judge_half_open(self, now: float, health: AttemptHealth) -> None:
        if self._trial is None:
            if health != "ok":
                self._open(now, "the half-open probe failed")
                return
            self._trial, self._trial_at = [1, 0, 0], now
        self._trial[1 if health != "unanswered" else 2] += 1
        budget = self._config.min_requests
        limit = max(1, math.ceil(self._config.unanswered_ratio * budget))
        if self._trial[2] >= limit:
            self._open(now, f"{self._trial[2]} of the half-open trial went unanswered")
        elif self._trial[1] > budget - limit:
            self._close()

    def _trip_reason(self, now: float) -> str | None:
        c = self._config
        if self._attempts >= c.min_requests and self._unanswered >= c.unanswered_ratio * (
            self._attempts
        ):
            return f"{self._unanswered} of {self._attempts} attempts unanswered"
        if (
            self._failing_since is not None
            and now - self._failing_since >= c.no_success_s
            and self._failures_since_ok >= c.min_requests
        ):
            return f"no success for {now - self._failing_since:.0f} s"
        return None

    def _count(self, now: float, health: AttemptHealth) -> None:
        second = int(now)
        if not self._window or self._window[-1][0] != second:
            self._window.append([second, 0, 0, 0])
        bucket = self._window[-1]
        bucket[1] += 1
        self._attempts += 1
        if health == "unanswered":
            bucket[2] += 1
            self._unanswered += 1
        elif health == "ok":
            bucket[3] += 1
            self._ok += 1
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - self._config.window_s:
            _, attempts, unanswered, ok = self._window.popleft()
            self._attempts -= attempts
            self._unanswered -= unanswered
            self._ok -= ok

    def _open(self, now: float, reason: str) -> None:
        self._trips += 1
        self._cooldown_s = min(
            self._config.max_cooldown_s, self._config.cooldown_s * 2 ** (self._trips - 1)
        )
        self._open_until = now + self._cooldown_s
        self._probe_at, self._trial = None, None
        self._set(BreakerState.OPEN, reason)

    def _close(self) -> None:
        self._window.clear()
        self._attempts = self._unanswered = self._ok = 0
        self._probe_at, self._trial = None, None
        self._set(BreakerState.CLOSED, "the half-open trial was answered")

    def _set(self, state: BreakerState, reason: str) -> None:
        old, self._state = self._state, state
        if self._listener is not None and old is not state:
            self._listener(old, state, reason)


OriginListener = Callable[[str, BreakerState, BreakerState, str], None]


class EndpointGuards:
    """The breaker and in-flight count of every origin this process delivers to.

    Bounded: past ``max_origins`` the least recently used idle, closed origin is forgotten.
    """

    def __init__(
        self,
        config: BreakerConfig,
        *,
        max_in_flight_per_endpoint: int,
        clock: Callable[[], float] = time.monotonic,
        max_origins: int = MAX_TRACKED_ORIGINS,
        listener: OriginListener | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._limit = max_in_flight_per_endpoint
        self._max_origins = max_origins
        self._listener = listener
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def breaker(self, origin: str) -> CircuitBreaker:
        breaker = self._breakers.get(origin)
        if breaker is None:
            listener = self._listener
            on_change: Listener | None = None
            if listener is not None:

                def on_change(old: BreakerState, new: BreakerState, reason: str) -> None:
                    listener(origin, old, new, reason)

            breaker = CircuitBreaker(self._config, self._clock, on_change)
            self._breakers[origin] = breaker
            self._evict()
        self._breakers.move_to_end(origin)
        return breaker

    def known(self) -> dict[str, CircuitBreaker]:
        """Every origin tracked now, most recently used last (a read-only view)."""
        return dict(self._breakers)

    def in_flight(self, origin: str) -> int:
        return self._in_flight.get(origin, 0)

    def has_capacity(self, origin: str) -> bool:
        return self._in_flight.get(origin, 0) < self._limit

    def acquire(self, origin: str) -> None:
        self._in_flight[origin] = self._in_flight.get(origin, 0) + 1

    def release(self, origin: str) -> None:
        left = self._in_flight.get(origin, 0) - 1
        if left > 0:
            self._in_flight[origin] = left
        else:
            self._in_flight.pop(origin, None)

    def open_origins(self) -> list[str]:
        return [o for o, b in self._breakers.items() if b.state is not BreakerState.CLOSED]

    def _evict(self) -> None:
        for origin in list(self._breakers):
            if len(self._breakers) <= self._max_origins:
                return
            idle = origin not in self._in_flight
            if idle and self._breakers[origin].state is BreakerState.CLOSED:
                del self._breakers[origin]
