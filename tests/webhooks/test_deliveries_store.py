"""The durable retry state in a real Redis: scheduling is idempotent, a lease keeps two
processes from attempting the same delivery, and a dead holder's lease expires."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from relay.models import WebhookDelivery
from relay.webhooks.deliveries import DeliveryStore


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
    a = DeliveryStore(redis_client, prefix=unique, done_retention_s=60)
    b = DeliveryStore(redis_client, prefix=unique, done_retention_s=60)
    now = time.time()
    deliveries = [_delivery(i) for i in range(3)]
    assert await a.schedule(deliveries, now) == 3
    assert await a.schedule(deliveries, now) == 0, "already pending"
    assert await a.pending() == 3
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"{unique}*")]
    assert all(k.startswith(f"{unique}:{{{unique}:webhooks}}:") for k in keys), keys

    ids = await a.due_ids(now, 10)
    first = await a.claim(ids, now, lease_s=5)
    assert sorted(c.delivery.event_id for c in first) == ["evt_0", "evt_1", "evt_2"]
    assert first[0].delivery.body == deliveries[int(first[0].delivery.event_id[-1])].body
    assert await b.claim(ids, now, lease_s=5) == [], "leased: nobody else gets them"
    assert await b.due_ids(now + 1, 10) == []

    # The lease of a dead holder expires: b takes over and a can no longer write.
    later = now + 6
    taken = await b.claim(await b.due_ids(later, 10), later, lease_s=5)
    assert len(taken) == 3
    assert not await a.finish(first[0], "delivered")
    assert not await a.reschedule(first[0], later)

    one = taken[0]
    updated = one.delivery.model_copy(update={"attempts": 1, "last_status": 500})
    assert await b.reschedule(one, later + 100, updated)
    assert await b.next_due() is not None
    again = await b.claim([one.delivery.delivery_id], later + 100, lease_s=5)
    assert again[0].delivery.attempts == 1
    assert again[0].delivery.last_status == 500
    assert await b.finish(again[0], "delivered")
    assert await b.schedule([one.delivery], later) == 0, "finished: a re-read result is ignored"
    assert await b.schedule([one.delivery], later, force=True) == 1, "a replay starts afresh"
    assert await b.pending() == 3
