"""Per-origin rate limits shared by every relay process, enforced in Redis.

``RELAY_WEBHOOK_RATE_LIMITS`` maps origins to requests per second, plus an optional
``"default"`` for every other origin (no entry and no default: unlimited). The limiter is a
GCRA ("virtual scheduling") in one Lua script on one key per origin, so every script touches a
single slot: the key holds the theoretical time of the next free send. A caller reserves a send
time at most ``max_wait_s`` ahead and sleeps until it, or is told how long to wait and defers the
delivery (not an attempt). Sends are spaced ``1/rate`` apart in Redis time across all processes:
no burst, so a receiver limited to N/s sees at most N in any second, give or take network jitter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

DEFAULT_KEY = "default"

# KEYS[1] the origin's next-free time; ARGV: interval_s, max_wait_s. Returns {granted, wait_s}.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, string.format('%.6f', wait)} end
local ttl = math.ceil((tat + interval - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', tat + interval), 'PX', ttl)
return {1, string.format('%.6f', wait)}
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
    """``granted``: send after ``wait_s``; else nothing was reserved, try in ``wait_s``."""

    granted: bool
    wait_s: float


class RateLimiter:
    """Reserves send times for origins in Redis (one key, one slot, one script per call)."""

    def __init__(self, redis: Redis, *, prefix: str, limits: RateLimits) -> None:
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
        granted, wait = await self._reserve(keys=[self.key(origin)], args=[1.0 / rate, max_wait_s])
        return Reservation(bool(int(granted)), float(wait))
