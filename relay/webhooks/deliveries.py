"""Durable webhook retry state in Redis: who is due when, and who is attempting it now.

Keys, all under one hash tag so every script touches a single Redis Cluster slot::

    <prefix>:{<prefix>:webhooks}:due        sorted set: delivery id -> due time (unix seconds)
    <prefix>:{<prefix>:webhooks}:d:<id>     hash: a WebhookDelivery (body, endpoint, attempts…)
    <prefix>:{<prefix>:webhooks}:done:<id>  string with a TTL: the delivery finished (outcome)

A claim is a lease: it moves the delivery's due time to ``now + lease`` and stamps a random token
into its hash. Only the holder of the token can finish or reschedule it; if the holder dies, the
due time passes and another process claims it. Each script names all its keys in ``KEYS``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from relay.models import WebhookDelivery
from relay.redis import RedisClient, pipeline

_SCHEDULE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[3] == '0' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

_CLAIM_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'lease', ARGV[4])
return redis.call('HGETALL', KEYS[2])
"""

_RESCHEDULE_LUA = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], 'lease')
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

_FINISH_LUA = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[4]))
return 1
"""


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this process holds the lease on, until it finishes or reschedules it."""

    delivery: WebhookDelivery
    token: str


class DeliveryStore:
    """Schedules, claims, reschedules and finishes webhook deliveries (docs/webhooks.md)."""

    def __init__(self, redis: RedisClient, *, prefix: str, done_retention_s: int) -> None:
        self._redis = redis
        self._base = f"{prefix}:{{{prefix}:webhooks}}"
        self._due = f"{self._base}:due"
        self._done_retention_s = done_retention_s
        self._schedule = redis.register_script(_SCHEDULE_LUA)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._reschedule = redis.register_script(_RESCHEDULE_LUA)
        self._finish = redis.register_script(_FINISH_LUA)

    def _hash(self, delivery_id: str) -> str:
        return f"{self._base}:d:{delivery_id}"

    def _done(self, delivery_id: str) -> str:
        return f"{self._base}:done:{delivery_id}"

    async def schedule(
        self, deliveries: list[WebhookDelivery], due: float, *, force: bool = False
    ) -> int:
        """Add deliveries due at ``due``; returns how many were new.

        A delivery already pending is left alone; one already finished is too, unless ``force``
        (a replay from the dead-letter topic starts it afresh).
        """
        if not deliveries:
            return 0
        async with pipeline(self._redis) as pipe:
            for d in deliveries:
                fields = [item for pair in d.to_fields().items() for item in pair]
                await self._schedule(
                    keys=[self._due, self._hash(d.delivery_id), self._done(d.delivery_id)],
                    args=[d.delivery_id, repr(due), "1" if force else "0", *fields],
                    client=pipe,
                )
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def due_ids(self, now: float, limit: int) -> list[str]:
        raw = await self._redis.zrangebyscore(self._due, "-inf", repr(now), start=0, num=limit)
        return [item.decode() if isinstance(item, bytes) else str(item) for item in raw]

    async def next_due(self) -> float | None:
        """The earliest due time (leases included), or ``None`` when nothing is pending."""
        first = await self._redis.zrange(self._due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def pending(self) -> int:
        count: int = await self._redis.zcard(self._due)
        return count

    async def claim(self, ids: list[str], now: float, lease_s: float) -> list[ClaimedDelivery]:
        """Lease the deliveries among ``ids`` that are still due; others are skipped."""
        if not ids:
            return []
        token = secrets.token_hex(8)
        async with pipeline(self._redis) as pipe:
            for delivery_id in ids:
                await self._claim(
                    keys=[self._due, self._hash(delivery_id)],
                    args=[delivery_id, repr(now), repr(now + lease_s), token],
                    client=pipe,
                )
            results = await pipe.execute()
        claimed = []
        for raw in results:
            if raw:
                fields = dict(zip(raw[::2], raw[1::2], strict=True))
                claimed.append(ClaimedDelivery(WebhookDelivery.from_fields(fields), token))
        return claimed

    async def reschedule(
        self, claimed: ClaimedDelivery, due: float, updated: WebhookDelivery | None = None
    ) -> bool:
        """Give the lease back with a new due time (and the delivery's new attempt state)."""
        fields = [] if updated is None else _state_fields(updated)
        result = await self._reschedule(
            keys=[self._due, self._hash(claimed.delivery.delivery_id)],
            args=[claimed.delivery.delivery_id, claimed.token, repr(due), *fields],
        )
        return bool(result)

    async def finish(self, claimed: ClaimedDelivery, outcome: str) -> bool:
        """Drop the delivery and remember its outcome for the retention, so a re-read result
        is not delivered again. ``False`` when the lease was lost to another process."""
        delivery_id = claimed.delivery.delivery_id
        result = await self._finish(
            keys=[self._due, self._hash(delivery_id), self._done(delivery_id)],
            args=[delivery_id, claimed.token, outcome, str(self._done_retention_s)],
        )
        return bool(result)


def _state_fields(delivery: WebhookDelivery) -> list[bytes]:
    fields = delivery.to_fields()
    return [
        item
        for name in ("attempts", "last_status", "last_error")
        for item in (name.encode(), fields[name])
    ]
