"""``relay webhooks replay``: schedule dead-lettered webhook deliveries again.

Reads the webhook dead-letter topic from the beginning up to its end at the time of the call,
keeps the records that match the filters, and schedules each as a fresh delivery (attempt 0) in
Redis. A running relay with webhooks enabled then delivers them on the normal schedule. A
delivery that is already pending is left alone, so replaying twice does not deliver twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import TopicPartition
from pydantic import ValidationError

from relay.kafka import kafka_client_options, start_kafka_client
from relay.models import WebhookDeadLetter, WebhookDelivery
from relay.redis import redis_client
from relay.settings import RelaySettings
from relay.webhooks.deliveries import store_from_settings
from relay.webhooks.lookup import dead_letter_consumer

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 500
REDIS_MAX_CONNECTIONS = 4


@dataclass
class ReplayCounts:
    read: int = 0
    matched: int = 0
    scheduled: int = 0
    already_pending: int = 0
    unreadable: int = 0

    def summary(self) -> str:
        return (
            f"read={self.read} matched={self.matched} scheduled={self.scheduled} "
            f"already_pending={self.already_pending} unreadable={self.unreadable}"
        )


DeadLetterRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def _read_dead_letters(settings: RelaySettings) -> list[DeadLetterRecord]:
    kafka = kafka_client_options(settings)
    consumer = dead_letter_consumer(settings, "replay")
    try:
        await start_kafka_client(consumer, kafka)
        topic = settings.webhook_dead_letter_topic
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[DeadLetterRecord] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            for tp, records in batch.items():
                out.extend(
                    (r.key, r.value, list(r.headers or ())) for r in records if r.offset < ends[tp]
                )
        return out
    finally:
        await consumer.stop()


async def replay_dead_letters(
    settings: RelaySettings,
    *,
    endpoint: str | None = None,
    key: str | None = None,
) -> ReplayCounts:
    """Schedule the dead letters matching ``endpoint`` and ``key`` (``None`` matches all)."""
    counts = ReplayCounts()
    fresh: dict[str, WebhookDelivery] = {}
    for record_key, value, headers in await _read_dead_letters(settings):
        counts.read += 1
        try:
            letter = WebhookDeadLetter.from_record(record_key, headers)
        except (KeyError, ValueError, ValidationError):
            counts.unreadable += 1
            continue
        if value is None:
            counts.unreadable += 1
            continue
        if (endpoint is not None and letter.endpoint != endpoint) or (
            key is not None and letter.idempotency_key != key
        ):
            continue
        counts.matched += 1
        delivery = WebhookDelivery(
            endpoint=letter.endpoint,
            event_id=letter.event_id,
            idempotency_key=letter.idempotency_key,
            type=letter.type,
            body=value,
            published_ms=letter.published_ms,
            replayed=True,
            traceparent=letter.traceparent,
            tracestate=letter.tracestate,
        )
        fresh[delivery.delivery_id] = delivery
    redis = redis_client(settings, max_connections=REDIS_MAX_CONNECTIONS)
    try:
        store = store_from_settings(redis, settings)
        counts.scheduled = await store.schedule(list(fresh.values()), time.time(), force=True)
    finally:
        await redis.aclose()
    counts.already_pending = len(fresh) - counts.scheduled
    log.info("webhook dead letters replayed", extra={"counts": counts.summary()})
    return counts
