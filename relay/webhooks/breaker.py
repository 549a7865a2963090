"""Per-endpoint isolation: a circuit breaker and an in-flight count for every webhook endpoint.

A dead or slow receiver must not delay healthy ones. Its breaker opens after N consecutive
failures, or when failures reach a ratio of the attempts in a sliding window (with a minimum
number of attempts, as Convoy does); after a cool-down one probe is let through (half-open): a
success closes the breaker, a failure opens it again. While open, the endpoint's deliveries are
deferred, not attempted. State is per process: each relay process learns an endpoint's health
from its own attempts.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

MAX_TRACKED_ENDPOINTS = 10_000


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 5
    failure_ratio: float = 0.7
    min_requests: int = 10
    window_s: float = 300.0
    cooldown_s: float = 30.0


class CircuitBreaker:
    """Closed → open → half-open → closed, on a monotonic ``clock`` a test can drive."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        # Outcomes per second of the window: [second, attempts, failures], with running totals,
        # so recording is O(1) however busy the endpoint (not a scan of every attempt).
        self._window: deque[list[int]] = deque()
        self._attempts = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """Whether an attempt may go out now; in half-open, only one probe at a time."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now < self._opened_at + self._config.cooldown_s:
                return False
            self._state = BreakerState.HALF_OPEN
            self._probe_started = None
        # A probe whose outcome never came (its task was cancelled) stops blocking after a cooldown.
        if self._probe_started is not None and now < self._probe_started + self._config.cooldown_s:
            return False
        self._probe_started = now
        return True

    def retry_in_s(self) -> float:
        """How long until an attempt may be allowed again (0 when it may go now).

        While a half-open probe is out, the others wait at most until it would count as lost,
        rather than polling for its outcome.
        """
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._config.cooldown_s - self._clock())
        if self._state is BreakerState.HALF_OPEN and self._probe_started is not None:
            return max(0.0, self._probe_started + self._config.cooldown_s - self._clock())
        return 0.0

    def record(self, healthy: bool) -> None:
        """The outcome of an allowed attempt: ``healthy`` means the endpoint answered sanely."""
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started = None
            if healthy:
                self._close()
            else:
                self._open(now)
            return
        second = int(now)
        if not self._window or self._window[-1][0] != second:
            self._window.append([second, 0, 0])
        bucket = self._window[-1]
        bucket[1] += 1
        self._attempts += 1
        if not healthy:
            bucket[2] += 1
            self._failures += 1
        while self._window and self._window[0][0] < now - self._config.window_s:
            _, attempts, failures = self._window.popleft()
            self._attempts -= attempts
            self._failures -= failures
        self._consecutive = 0 if healthy else self._consecutive + 1
        ratio_tripped = (
            self._attempts >= self._config.min_requests
            and self._failures / self._attempts >= self._config.failure_ratio
        )
        if self._state is BreakerState.CLOSED and (
            self._consecutive >= self._config.consecutive_failures or ratio_tripped
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window.clear()
        self._attempts = 0
        self._failures = 0


class EndpointGuards:
    """The breaker and in-flight count of every endpoint this process delivers to.

    Bounded: past ``max_endpoints`` the least recently used idle, closed endpoint is forgotten.
    """

    def __init__(
        self,
        config: BreakerConfig,
        *,
        max_in_flight_per_endpoint: int,
        clock: Callable[[], float] = time.monotonic,
        max_endpoints: int = MAX_TRACKED_ENDPOINTS,
    ) -> None:
        self._config = config
        self._clock = clock
        self._limit = max_in_flight_per_endpoint
        self._max_endpoints = max_endpoints
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def breaker(self, endpoint: str) -> CircuitBreaker:
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            breaker = self._breakers[endpoint] = CircuitBreaker(self._config, self._clock)
            self._evict()
        self._breakers.move_to_end(endpoint)
        return breaker

    def has_capacity(self, endpoint: str) -> bool:
        return self._in_flight.get(endpoint, 0) < self._limit

    def acquire(self, endpoint: str) -> None:
        self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1

    def release(self, endpoint: str) -> None:
        left = self._in_flight.get(endpoint, 0) - 1
        if left > 0:
            self._in_flight[endpoint] = left
        else:
            self._in_flight.pop(endpoint, None)

    def open_count(self) -> int:
        return sum(1 for b in self._breakers.values() if b.state is not BreakerState.CLOSED)

    def _evict(self) -> None:
        for endpoint in list(self._breakers):
            if len(self._breakers) <= self._max_endpoints:
                return
            idle = endpoint not in self._in_flight
            if idle and self._breakers[endpoint].state is BreakerState.CLOSED:
                del self._breakers[endpoint]
