"""The durable retry state in a real Redis: scheduling is idempotent, a lease keeps two
processes from attempting the same delivery, a dead holder's lease expires, state is spread
over shards that each sit in one hash slot, finished deliveries leave small tombstones that
keep their history, and the rate limiter spaces sends across clients."""

from __future__ import annotations

import asyncio
import itertools
import time

import redis.asyncio as aioredis
from redis.crc import key_slot

from relay.models import WebhookDelivery
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.history import AttemptRecord
from relay.webhooks.legacy import migrate_legacy
from relay.webhooks.lookup import key_deliveries
from relay.webhooks.ratelimit import RateLimiter, RateLimits


def _delivery(i: int, endpoint: str = "https://hooks.example/a") -> WebhookDelivery:
    return WebhookDelivery(
        endpoint=endpoint,
        event_id=f"evt_{i}",
        idempotency_key=f"key-{i}",
        type="task.succeeded",
        body=b'{"event_id":"evt_%d","x":"\xc3\xa9"}' % i,
        published_ms=1_700_000_000_000 + i,
    )


async def test_lease_and_reschedule_and_finish(redis_client: aioredis.Redis, unique: str) -> None:
    a = DeliveryStore(redis_client, prefix=unique, done_retention_s=60, shards=4)
    b = DeliveryStore(redis_client, prefix=unique, done_retention_s=60, shards=4)
    now = time.time()
    deliveries = [_delivery(i) for i in range(3)]
    assert await a.schedule(deliveries, now) == 3
    assert await a.schedule(deliveries, now) == 0, "already pending"
    assert await a.pending() == 3
    assert await a.pending_by_origin() == {"https://hooks.example": 3}

    refs = await a.due(now, 10)
    first = await a.claim(refs, now, lease_s=5)
    assert sorted(c.delivery.event_id for c in first) == ["evt_0", "evt_1", "evt_2"]
    assert first[0].delivery.body == deliveries[int(first[0].delivery.event_id[-1])].body
    assert await b.claim(refs, now, lease_s=5) == [], "leased: nobody else gets them"
    assert await b.due(now + 1, 10) == []

    # The lease of a dead holder expires: b takes over and a can no longer write.
    later = now + 6
    taken = await b.claim(await b.due(later, 10), later, lease_s=5)
    assert len(taken) == 3
    assert not await a.finish(first[0], "delivered")
    assert not await a.reschedule(first[0], later)

    one = taken[0]
    updated = one.delivery.model_copy(update={"attempts": 1, "last_status": 500})
    failed = AttemptRecord(int(later * 1000), "http_5xx", 500, 12)
    assert await b.reschedule(one, later + 100, updated, failed)
    assert await b.next_due() is not None
    again = await b.claim(
        [r for r in refs if r.delivery_id == one.delivery.delivery_id], later + 100, 5
    )
    assert again[0].delivery.attempts == 1
    assert again[0].delivery.last_status == 500
    ok = AttemptRecord(int((later + 100) * 1000), "success", 200, 7)
    assert await b.finish(again[0], "delivered", ok)
    assert await b.schedule([one.delivery], later) == 0, "finished: a re-read result is ignored"
    assert await b.pending_by_origin() == {"https://hooks.example": 2}

    rows = await key_deliveries(b, one.delivery.idempotency_key, time.time())
    assert len(rows) == 1
    assert rows[0]["state"] == "delivered"
    assert [(x["status"], x["outcome"], x["latency_ms"]) for x in rows[0]["attempts"]] == [
        (500, "http_5xx", 12),
        (200, "success", 7),
    ]
    assert await b.schedule([one.delivery], later, force=True) == 1, "a replay starts afresh"
    assert await b.pending() == 3
    rows = await key_deliveries(b, one.delivery.idempotency_key, time.time())
    assert sorted(r["state"] for r in rows) == ["delivered", "pending"]


async def test_state_is_spread_over_shards_each_in_one_slot(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = DeliveryStore(redis_client, prefix=unique, done_retention_s=3600, shards=8)
    now = time.time()
    deliveries = [_delivery(i, f"https://tenant-{i % 30}.example/hook") for i in range(200)]
    assert await store.schedule(deliveries, now) == 200
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"{unique}*")]
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys}
    assert tags == {f"{unique}:wh:{s}" for s in range(8)}, "every shard got some"
    slots_by_shard = {
        s: {key_slot(k.encode()) for k in keys if f":wh:{s}}}" in k} for s in range(8)
    }
    assert all(len(slots) == 1 for slots in slots_by_shard.values()), "a shard is one slot"
    assert len({next(iter(v)) for v in slots_by_shard.values()}) == 8, "shards differ in slot"

    # Fair claiming: a backlog in one shard does not starve the others.
    hot = [d for d in deliveries if store.shard_of(d.idempotency_key) == 0][:3]
    cold = [d for d in deliveries if store.shard_of(d.idempotency_key) != 0]
    await redis_client.zadd(store.due_key(0), {d.delivery_id: now - 100 for d in hot})
    refs = await store.due(now, 8)
    assert len({r.shard for r in refs}) >= 6, refs
    claimed = await store.claim(refs, now, 30)
    assert len(claimed) == 8
    assert len(cold) > 0

    # A tombstone is one short field in a bucket hash, not a key per delivery.
    for c in claimed:
        assert await store.finish(c, "delivered", AttemptRecord(int(now * 1000), "success", 200, 3))
    done = [k.decode() async for k in redis_client.scan_iter(match=f"{unique}*:done:*")]
    assert 1 <= len(done) <= 8
    for c in claimed:
        field = await redis_client.hget(
            store.done_keys(c.shard, now)[0], c.delivery.idempotency_key
        )
        assert field is not None
        assert len(field) < 80, field


async def test_legacy_single_tag_deliveries_move_into_shards(
    redis_client: aioredis.Redis, unique: str
) -> None:
    legacy = f"{unique}:{{{unique}:webhooks}}"
    now = time.time()
    d = _delivery(1)
    await redis_client.hset(
        f"{legacy}:d:{d.delivery_id}", mapping={k: v for k, v in d.to_fields().items()}
    )
    await redis_client.zadd(f"{legacy}:due", {d.delivery_id: now - 1})
    store = DeliveryStore(redis_client, prefix=unique, done_retention_s=60, shards=4)
    assert await migrate_legacy(store, now) == 1
    assert await redis_client.exists(f"{legacy}:due") == 0
    (claimed,) = await store.claim(await store.due(now, 10), now, 5)
    assert claimed.delivery == d


async def test_the_rate_limiter_spaces_sends_across_clients(
    redis_client: aioredis.Redis, unique: str
) -> None:
    limits = RateLimits({"https://slow.example": 20.0}, default=None)
    one = RateLimiter(redis_client, prefix=unique, limits=limits)
    two = RateLimiter(redis_client, prefix=unique, limits=limits)
    assert (await one.reserve("https://free.example", 1.0)).wait_s == 0, "unlisted: unlimited"
    started = time.monotonic()
    reservations = await asyncio.gather(
        *[(one if i % 2 else two).reserve("https://slow.example", 1.0) for i in range(30)]
    )
    elapsed_s = time.monotonic() - started  # Redis's clock moves on while a loaded box calls
    spacing = 1 / (20 * 0.98)
    granted = sorted(r.send_at for r in reservations if r.granted)
    # A second ahead at 20/s (less 2 %): the one now and 19 more, plus what the time taken freed.
    assert 20 <= len(granted) <= 20 + int(elapsed_s / spacing) + 1, (len(granted), elapsed_s)
    assert all(b - a >= spacing - 1e-5 for a, b in itertools.pairwise(granted)), granted
    assert all(r.wait_s <= 1.0 for r in reservations if r.granted), "never more than 1 s ahead"
    refused = [r for r in reservations if not r.granted]
    assert len(refused) == 30 - len(granted)
    assert all(r.wait_s > 1.0 for r in refused), "refused only when the slot is over 1 s away"
