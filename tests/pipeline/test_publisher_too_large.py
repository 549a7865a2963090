"""Records Kafka refuses as too large, against a real broker whose topics have a small
``max.message.bytes``: never retried as they were (that would fail for ever and hold the
partition). A result goes out without its trace headers, else ``RecordTooLarge``; a dead letter
goes out cut, saying so."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay.exceptions import RecordTooLarge
from relay.metrics import RelayMetrics
from relay.models import rejection
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.publisher import DEAD_LETTER_KEPT_VALUE_BYTES, ResultPublisher
from relay.tracing.context import TraceContext

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = ",".join(f"vendor{i}=" + "v" * 40 for i in range(10))  # valid, ~470 characters


async def _topic(bootstrap: str, name: str, max_message_bytes: int) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_message_bytes)}
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    return name


async def _read_all(bootstrap: str, topic: str) -> list[object]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=3000)
        return [r for records in batch.values() for r in records]
    finally:
        await consumer.stop()


def _count(metrics: RelayMetrics, topic: str, action: str) -> float:
    value = metrics.registry.get_sample_value(
        "relay_publish_too_large_total", {"topic": topic, "action": action}
    )
    return value or 0.0


async def test_too_large_results_and_dead_letters_are_final(
    kafka_bootstrap: str, unique: str
) -> None:
    results = await _topic(kafka_bootstrap, f"results-{unique}", 2000)
    dlq = await _topic(kafka_bootstrap, f"dlq-{unique}", 80_000)
    tiny_dlq = await _topic(kafka_bootstrap, f"tiny-dlq-{unique}", 600)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    metrics = RelayMetrics()
    publisher = ResultPublisher(producer, metrics, result_topic=results, dead_letter_topic=dlq)
    try:
        # Fits without the trace headers, not with them: published without them.
        fits = rejection("order-1", "invalid_input", "m" * 1300)
        await publisher.publish(fits, trace=TraceContext(PARENT, STATE))
        [record] = await _read_all(kafka_bootstrap, results)
        assert "traceparent" not in dict(record.headers)  # type: ignore[attr-defined]
        assert _count(metrics, "result", "without_trace") == 1
        # Too large even so: final, for the lifecycle to dead-letter.
        with pytest.raises(RecordTooLarge):
            await publisher.publish(rejection("order-2", "invalid_input", "m" * 3000))

        # Sent together, both go in one batch the broker refuses as a whole: the small one is
        # still published, alone, and only the big one is too large.
        small, big = rejection("order-4", "x", "small"), rejection("order-5", "x", "m" * 3000)
        outcomes = await asyncio.gather(
            publisher.publish(small), publisher.publish(big), return_exceptions=True
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], RecordTooLarge)
        keys = [r.key for r in await _read_all(kafka_bootstrap, results)]  # type: ignore[attr-defined]
        assert keys == [b"order-1", b"order-4"]

        source = SourceRecord("requests", 0, 7, b"order-3", None, 0)
        await publisher.dead_letter(source, "record_too_large", "big", value=b"v" * 120_000)
        [letter] = await _read_all(kafka_bootstrap, dlq)
        headers = dict(letter.headers)  # type: ignore[attr-defined]
        assert len(letter.value) == DEAD_LETTER_KEPT_VALUE_BYTES  # type: ignore[attr-defined]
        assert headers["original.size"] == b"120000"
        assert headers["original.truncated"] == b"true"
        assert _count(metrics, "dead_letter", "truncated") == 1

        cut = ResultPublisher(producer, metrics, result_topic=results, dead_letter_topic=tiny_dlq)
        await cut.dead_letter(source, "record_too_large", "big", value=b"v" * 120_000)
        [empty] = await _read_all(kafka_bootstrap, tiny_dlq)
        assert empty.value == b""  # type: ignore[attr-defined]
        counted = metrics.registry.get_sample_value(
            "relay_records_dead_lettered_total", {"reason": "record_too_large"}
        )
        assert counted == 2
    finally:
        await producer.stop()
