"""Durable webhook retry state in Redis, split into shards that each live in one hash slot.

A delivery belongs to shard ``crc32(idempotency key) % RELAY_WEBHOOK_SHARDS``; every key of a
shard carries the hash tag ``{<prefix>:wh:<shard>}``, so every script touches one Redis Cluster
slot while the shards spread over the cluster's masters::

    <tag>:due           sorted set: delivery id -> due time (unix seconds)
    <tag>:d:<id>        hash: a WebhookDelivery, its lease token and its attempt history
    <tag>:keys          hash: idempotency key -> ids of its pending deliveries (lookup)
    <tag>:origins       hash: origin -> pending deliveries (status page, metric)
    <tag>:done:<n>      hash, expiring: idempotency key -> tombstones of finished deliveries

(``<tag>`` is ``<prefix>:{<prefix>:wh:<shard>}``.) A claim is a lease: it moves the due time to
``now + lease`` and stamps a random token into the hash; only the token holder may reschedule or
finish. Tombstones go into hashes bucketed by time (``done:<n>``, at most 8 of them cover the
retention) so a finished delivery costs one short hash field, not a key of its own.
"""

from __future__ import annotations

import math
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from relay.models import WebhookDelivery
from relay.origins import origin_of
from relay.pipeline.idempotency import record_key
from relay.redis import RedisClient, pipeline
from relay.settings import RelaySettings
from relay.webhooks import scripts
from relay.webhooks.history import (
    AttemptRecord,
    CompactDone,
    Tombstone,
    append_attempt,
    decode_compact,
    decode_history,
    id_prefix,
    marker,
    origin_ref,
)

MAX_DONE_BUCKETS = 7


@dataclass(frozen=True, slots=True)
class DueRef:
    shard: int
    delivery_id: str


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this process holds the lease on, until it finishes or reschedules it."""

    delivery: WebhookDelivery
    token: str
    shard: int
    history: str = ""

    @property
    def origin(self) -> str:
        return origin_of(self.delivery.endpoint)


class DeliveryStore:
    """Schedules, claims, reschedules and finishes webhook deliveries (docs/webhooks.md)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        done_retention_s: int,
        shards: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = self._redis = redis
        self.prefix = prefix
        self.shards = shards
        self._clock = clock
        self._done_retention_s = done_retention_s
        self._bucket_s = max(60, math.ceil(done_retention_s / MAX_DONE_BUCKETS))
        self._buckets = math.ceil(done_retention_s / self._bucket_s) + 1
        self._next_shard = 0
        self._schedule = redis.register_script(scripts.SCHEDULE)
        self._claim = redis.register_script(scripts.CLAIM)
        self._reschedule = redis.register_script(scripts.RESCHEDULE)
        self._finish = redis.register_script(scripts.FINISH)
        self._tombstone = redis.register_script(scripts.TOMBSTONE)
        self._done_mark = redis.register_script(scripts.DONE_MARK)

    # Key names

    def tag(self, shard: int) -> str:
        return f"{self.prefix}:{{{self.prefix}:wh:{shard}}}"

    def shard_of(self, idempotency_key: str) -> int:
        return zlib.crc32(idempotency_key.encode()) % self.shards

    def due_key(self, shard: int) -> str:
        return f"{self.tag(shard)}:due"

    def hash_key(self, shard: int, delivery_id: str) -> str:
        return f"{self.tag(shard)}:d:{delivery_id}"

    def index_keys(self, shard: int) -> tuple[str, str]:
        return f"{self.tag(shard)}:keys", f"{self.tag(shard)}:origins"

    def record_key(self, idempotency_key: str) -> str:
        """The key's idempotency record, where a clean delivery's done marker is kept."""
        return record_key(self.prefix, idempotency_key)

    def done_keys(self, shard: int, now: float) -> list[str]:
        """The tombstone buckets that may hold a delivery finished within the retention."""
        newest = int(now // self._bucket_s)
        return [f"{self.tag(shard)}:done:{n}" for n in range(newest, newest - self._buckets, -1)]

    # Scheduling and claiming

    async def schedule(
        self, deliveries: list[WebhookDelivery], due: float, *, force: bool = False
    ) -> int:
        """Add deliveries due at ``due``; returns how many were new.

        A delivery already pending is left alone; one already finished is too, unless ``force``
        (a replay from the dead-letter topic starts it afresh).
        """
        if not force:
            deliveries = await self._not_done(deliveries)
        if not deliveries:
            return 0
        now = self._clock()
        async with pipeline(self._redis) as pipe:
            for d in deliveries:
                await self._schedule_one(pipe, d, due, force, now)
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def schedule_leased(
        self, deliveries: list[WebhookDelivery], lease_s: float, token: str
    ) -> list[ClaimedDelivery | None]:
        """Add deliveries already leased to the caller (token ``token``, for ``lease_s``), to be
        attempted by it at once: one pipeline for all. Per delivery, the claim, or ``None`` when
        it was scheduled before (pending, or finished within the retention): the process that
        scheduled it attempts it. A holder that dies leaves it to be claimed at lease expiry."""
        if not deliveries:
            return []
        # A result published again after a crash: a delivery done at its first attempt left
        # only its marker in the key's record, not a tombstone the script would find.
        fresh = {id(d) for d in await self._not_done(deliveries)}
        now = self._clock()
        async with pipeline(self._redis) as pipe:
            for d in deliveries:
                if id(d) in fresh:
                    await self._schedule_one(pipe, d, now + lease_s, False, now, lease=token)
            results = iter(await pipe.execute())
        return [
            ClaimedDelivery(d, token, self.shard_of(d.idempotency_key))
            if id(d) in fresh and int(next(results))
            else None
            for d in deliveries
        ]

    async def _not_done(self, deliveries: list[WebhookDelivery]) -> list[WebhookDelivery]:
        """The deliveries without a compact done marker in their key's idempotency record.

        The record is in another Cluster slot than the shard, so this read is not atomic with
        the schedule script: a result read again at the very moment its delivery finishes may be
        delivered a second time (at least once, as always; same ``webhook-id``)."""
        async with pipeline(self._redis) as pipe:
            for d in deliveries:
                pipe.hget(self.record_key(d.idempotency_key), "w")
            marks = await pipe.execute()
        out = []
        for d, raw in zip(deliveries, marks, strict=True):
            done = {c.id_prefix for c in decode_compact(text_of(raw))} if raw else set()
            if id_prefix(d.delivery_id) not in done:
                out.append(d)
        return out

    async def _schedule_one(
        self,
        client: Pipeline,
        d: WebhookDelivery,
        due: float,
        force: bool,
        now: float,
        *,
        lease: str | None = None,
    ) -> None:
        shard = self.shard_of(d.idempotency_key)
        done = self.done_keys(shard, now)
        fields = [item for pair in d.to_fields().items() for item in pair]
        if lease is not None:
            fields += [b"lease", lease.encode()]
        await self._schedule(
            keys=[
                self.due_key(shard),
                self.hash_key(shard, d.delivery_id),
                *self.index_keys(shard),
                *done,
            ],
            args=[
                d.delivery_id,
                repr(due),
                "1" if force else "0",
                d.idempotency_key,
                origin_of(d.endpoint),
                marker(d.delivery_id),
                str(len(done)),
                *fields,
            ],
            client=client,
        )

    async def due(self, now: float, limit: int) -> list[DueRef]:
        """Up to ``limit`` due deliveries, taken in turn from every shard that has some (the
        first shard rotates), so a backlog in one shard never starves the others."""
        async with pipeline(self._redis) as pipe:
            for shard in range(self.shards):
                pipe.zrangebyscore(self.due_key(shard), "-inf", repr(now), start=0, num=limit)
            per_shard = await pipe.execute()
        start, self._next_shard = self._next_shard, (self._next_shard + 1) % self.shards
        queues = [
            [DueRef(s, text_of(i)) for i in per_shard[s]]
            for s in [*range(start, self.shards), *range(start)]
        ]
        out: list[DueRef] = []
        depth = 0
        while len(out) < limit and any(depth < len(q) for q in queues):
            out.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return out[:limit]

    async def next_due(self) -> float | None:
        """The earliest due time over all shards (leases included); ``None`` when idle."""
        async with pipeline(self._redis) as pipe:
            for shard in range(self.shards):
                pipe.zrange(self.due_key(shard), 0, 0, withscores=True)
            firsts = await pipe.execute()
        scores = [float(first[0][1]) for first in firsts if first]
        return min(scores) if scores else None

    async def pending(self) -> int:
        async with pipeline(self._redis) as pipe:
            for shard in range(self.shards):
                pipe.zcard(self.due_key(shard))
            return sum(int(n) for n in await pipe.execute())

    async def pending_by_origin(self) -> dict[str, int]:
        """Pending deliveries per origin, over every process and shard."""
        async with pipeline(self._redis) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(self.index_keys(shard)[1])
            maps = await pipe.execute()
        out: dict[str, int] = {}
        for counts in maps:
            for origin, n in counts.items():
                out[text_of(origin)] = out.get(text_of(origin), 0) + int(n)
        return {o: n for o, n in out.items() if n > 0}

    async def claim(self, refs: list[DueRef], now: float, lease_s: float) -> list[ClaimedDelivery]:
        """Lease the deliveries among ``refs`` that are still due; others are skipped."""
        if not refs:
            return []
        token = secrets.token_hex(8)
        async with pipeline(self._redis) as pipe:
            for ref in refs:
                await self._claim(
                    keys=[self.due_key(ref.shard), self.hash_key(ref.shard, ref.delivery_id)],
                    args=[ref.delivery_id, repr(now), repr(now + lease_s), token],
                    client=pipe,
                )
            results = await pipe.execute()
        claimed = []
        for ref, raw in zip(refs, results, strict=True):
            if raw:
                fields = dict(zip(raw[::2], raw[1::2], strict=True))
                history = text_of(fields.get(b"hist", b""))
                delivery = WebhookDelivery.from_fields(fields)
                claimed.append(ClaimedDelivery(delivery, token, ref.shard, history))
        return claimed

    async def reschedule(
        self,
        claimed: ClaimedDelivery,
        due: float,
        updated: WebhookDelivery | None = None,
        attempt: AttemptRecord | None = None,
    ) -> bool:
        """Give the lease back with a new due time (and the attempt just made, if any)."""
        fields: list[bytes | str] = [] if updated is None else _state_fields(updated)
        if attempt is not None:
            fields += ["hist", append_attempt(claimed.history, attempt)]
        d = claimed.delivery
        result = await self._reschedule(
            keys=[self.due_key(claimed.shard), self.hash_key(claimed.shard, d.delivery_id)],
            args=[d.delivery_id, claimed.token, repr(due), *fields],
        )
        return bool(result)

    async def finish(
        self, claimed: ClaimedDelivery, outcome: str, attempt: AttemptRecord | None = None
    ) -> bool:
        """Drop the delivery and leave its tombstone (with its history and ``attempt``, the one
        just made) for the retention, so a re-read result is not delivered again. ``False``
        when the lease was lost to another process."""
        d, shard = claimed.delivery, claimed.shard
        now = self._clock()
        history = claimed.history
        if attempt is not None:
            history = append_attempt(history, attempt)
        attempts = decode_history(history)
        tomb = Tombstone(id_prefix(d.delivery_id), outcome, d.type, claimed.origin, attempts)
        # A delivery that got 200 at its first attempt leaves a marker of ~30 bytes in its key's
        # idempotency record instead of a tombstone line of its own (issue 17: bytes per request).
        compact = None
        if outcome == "delivered" and len(attempts) == 1 and attempts[0].status == 200:
            first = attempts[0]
            compact = CompactDone(
                id_prefix(d.delivery_id),
                d.type,
                origin_ref(claimed.origin),
                first.at_ms,
                first.latency_ms,
            )
        bucket = int(now // self._bucket_s)
        expire_at = (bucket + 1) * self._bucket_s + self._done_retention_s
        done_key = self.done_keys(shard, now)[0]
        result = await self._finish(
            keys=[
                self.due_key(shard),
                self.hash_key(shard, d.delivery_id),
                *self.index_keys(shard),
                done_key,
            ],
            args=[
                d.delivery_id,
                claimed.token,
                d.idempotency_key,
                claimed.origin,
                "" if compact else tomb.encode(),
                str(expire_at),
                compact.origin_ref if compact else "",
            ],
        )
        if result and compact:
            marker_kept = await self._done_mark(
                keys=[self.record_key(d.idempotency_key)], args=[compact.encode()]
            )
            if not marker_kept:  # no record to hold it: a tombstone line after all
                await self._tombstone(
                    keys=[done_key], args=[d.idempotency_key, tomb.encode(), str(expire_at)]
                )
        return bool(result)


def store_from_settings(redis: RedisClient, settings: RelaySettings) -> DeliveryStore:
    return DeliveryStore(
        redis,
        prefix=settings.redis_key_prefix,
        done_retention_s=settings.webhook_done_retention_s,
        shards=settings.webhook_shards,
    )


def text_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state_fields(delivery: WebhookDelivery) -> list[bytes | str]:
    fields = delivery.to_fields()
    return [
        item
        for name in ("attempts", "last_status", "last_error")
        for item in (name.encode(), fields[name])
    ]
