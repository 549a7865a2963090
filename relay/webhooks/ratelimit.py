"""Per-origin rate limits shared by every relay process, enforced in Redis.

``RELAY_WEBHOOK_RATE_LIMITS`` maps origins to requests per second, plus an optional
``"default"`` for every other origin (no entry and no default: unlimited). The limiter is a
GCRA ("virtual scheduling") in one Lua script on one key per origin, so every script touches a
single slot: the key holds the theoretical time of the next free send (Redis's clock). A caller
reserves a send time at most ``max_wait_s`` ahead and sleeps until it (on its own clock: hosts
are expected to be NTP-synchronised), or is told how long to wait and defers the delivery (not an
attempt). A caller that wakes too late for its slot (a busy event loop) reserves again rather
than send in a bunch with the slots after it. Sends are spaced ``1/(rate * RATE_MARGIN)`` apart
across all processes, with no burst: a receiver limited to N/s sees at most N in any second; the
2 % margin absorbs some of the jitter between a reserved send time and the request's arrival.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from relay.redis import RedisClient

DEFAULT_KEY = "default"
RATE_MARGIN = 0.98
MIN_TOLERANCE_S = 0.005

# KEYS[1] the origin's next free send time; ARGV: interval_s, max_wait_s.
# Returns {granted, wait_s, send_at}: send_at is the reserved (or next free) time, Redis clock.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then
  return {0, string.format('%.6f', wait), string.format('%.6f', tat)}
end
local ttl = math.ceil((tat + interval - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', tat + interval), 'PX', ttl)
return {1, string.format('%.6f', wait), string.format('%.6f', tat)}
"""


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests per second by origin, and for every other origin (``None``: unlimited)."""

    by_origin: Mapping[str, float]
    default: float | None = None

    @classmethod
    def from_setting(cls, limits: Mapping[str, float]) -> RateLimits:
        """From ``RELAY_WEBHOOK_RATE_LIMITS`` as validated by the settings (origins normalised)."""
        by_origin = {o: r for o, r in limits.items() if o != DEFAULT_KEY}
        return cls(by_origin, limits.get(DEFAULT_KEY))

    def rate_for(self, origin: str) -> float | None:
        return self.by_origin.get(origin, self.default)


@dataclass(frozen=True, slots=True)
class Reservation:
    """``granted``: send at ``send_at`` (unix time, ``wait_s`` after the reservation); else
    nothing was reserved: try again in ``wait_s``. ``tolerance_s``: how late a send may still
    go out in its slot (a quarter of the spacing, at least 5 ms)."""

    granted: bool
    wait_s: float
    send_at: float = 0.0
    tolerance_s: float = 0.0


class RateLimiter:
    """Reserves send times for origins in Redis (one key, one slot, one script per call)."""

    def __init__(self, redis: RedisClient, *, prefix: str, limits: RateLimits) -> None:
        self.limits = limits
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE_LUA)

    def key(self, origin: str) -> str:
        digest = hashlib.sha256(origin.encode()).hexdigest()[:16]
        return f"{self._prefix}:{{{self._prefix}:wh:rl:{digest}}}"

    async def reserve(self, origin: str, max_wait_s: float) -> Reservation:
        """A send time for ``origin`` within ``max_wait_s``, or how long until one is free."""
        rate = self.limits.rate_for(origin)
        if rate is None:
            return Reservation(True, 0.0)
        interval_s = 1.0 / (rate * RATE_MARGIN)
        granted, wait, send_at = await self._reserve(
            keys=[self.key(origin)], args=[interval_s, max_wait_s]
        )
        tolerance_s = max(interval_s / 4, MIN_TOLERANCE_S)
        return Reservation(bool(int(granted)), float(wait), float(send_at), tolerance_s)
