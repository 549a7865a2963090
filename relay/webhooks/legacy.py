"""Deliveries left by a relay from before sharding, moved into their shards.

Before ``RELAY_WEBHOOK_SHARDS`` every delivery lived under one hash tag,
``<prefix>:{<prefix>:webhooks}``. A sharded relay moves what it finds there into the shards,
keeping each due time, whenever it starts and once a minute after (so an older relay still
running during a rolling upgrade hands its work over as it goes). A delivery an older relay holds
the lease on is left until its lease ends. The move is not atomic across slots: a crash in
between schedules the delivery in its shard and leaves it behind too, which may deliver it
twice — at least once, as always. Old "done" markers are not moved; they expire on their own.
"""

from __future__ import annotations

from typing import cast

from relay.models import WebhookDelivery
from relay.webhooks.deliveries import DeliveryStore

BATCH = 100


async def migrate_legacy(store: DeliveryStore, now: float) -> int:
    """Move due or unleased legacy deliveries into their shards; returns how many moved."""
    base = f"{store.prefix}:{{{store.prefix}:webhooks}}"
    due_key = f"{base}:due"
    redis = store.redis
    moved = 0
    offset = 0
    while True:
        batch = await redis.zrange(due_key, offset, offset + BATCH - 1, withscores=True)
        if not batch:
            return moved
        skipped = 0
        for raw_id, score in cast(list[tuple[bytes, float]], batch):
            delivery_id = raw_id.decode()
            hash_key = f"{base}:d:{delivery_id}"
            fields = cast(dict[bytes, bytes], await redis.hgetall(hash_key))
            if fields and fields.get(b"lease") and float(score) > now:
                skipped += 1  # an older relay is attempting it right now
                continue
            if fields:
                delivery = WebhookDelivery.from_fields(fields)
                await store.schedule([delivery], float(score))
            await redis.delete(hash_key)
            await redis.zrem(due_key, raw_id)
            moved += 1 if fields else 0
        offset += skipped
