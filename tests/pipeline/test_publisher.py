"""What the publisher writes to Kafka, against a fake producer (no broker): result records keyed
and headed as DESIGN §3 and the webhook dispatcher expect, dead letters with their context."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from relay.metrics import RelayMetrics
from relay.models import rejection
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.publisher import ResultPublisher


@dataclass
class FakeProducer:
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, **record: Any) -> None:
        self.sent.append({"topic": topic, **record})

    async def send(self, topic: str, **record: Any) -> asyncio.Future[None]:
        """As aiokafka's: the record is queued, the future is the broker's answer."""
        self.sent.append({"topic": topic, **record})
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answer.set_result(None)
        return answer


def _publisher() -> tuple[ResultPublisher, FakeProducer, RelayMetrics]:
    producer, metrics = FakeProducer(), RelayMetrics()
    publisher = ResultPublisher(
        producer, metrics, result_topic="results", dead_letter_topic="requests.dlq"
    )
    return publisher, producer, metrics


async def test_a_result_is_keyed_by_its_idempotency_key_with_its_headers() -> None:
    publisher, producer, metrics = _publisher()
    result = rejection("order-1", "invalid_input", "prompt is required", model="m")
    await publisher.publish(result, webhook_url="https://hooks.example.com/a")
    await publisher.publish(result, body=b'{"as": "stored"}')
    first, second = producer.sent
    assert first["topic"] == "results"
    assert first["key"] == b"order-1"
    assert first["value"] == result.to_json_bytes()
    assert dict(first["headers"]) == {
        "content-type": b"application/json",
        "event-id": result.event_id.encode(),
        "type": b"request.rejected",
        "webhook-url": b"https://hooks.example.com/a",
    }
    assert second["value"] == b'{"as": "stored"}', "a stored body is published byte for byte"
    assert "webhook-url" not in dict(second["headers"])
    counted = metrics.registry.get_sample_value(
        "relay_results_published_total", {"type": "request.rejected"}
    )
    assert counted == 2


async def test_a_dead_letter_keeps_the_record_and_says_where_it_came_from() -> None:
    publisher, producer, metrics = _publisher()
    source = SourceRecord("requests", 3, 41, b"order-1", None, 1_700_000_000_000)
    await publisher.dead_letter(
        source,
        "internal_error",
        "boom \ud800 " + "x" * 2000,
        value=b'{"model": "m"}',
        extra_headers=[("error.class", "ValueError")],
    )
    [sent] = producer.sent
    headers = dict(sent["headers"])
    assert (sent["topic"], sent["key"], sent["value"]) == (
        "requests.dlq",
        b"order-1",
        b'{"model": "m"}',
    )
    assert headers["error.reason"] == b"internal_error"
    assert headers["error.message"].startswith(b"boom ? xxx")
    assert len(headers["error.message"]) == 1000, "capped"
    assert headers["error.class"] == b"ValueError"
    assert (headers["original.topic"], headers["original.partition"]) == (b"requests", b"3")
    assert (headers["original.offset"], headers["original.timestamp"]) == (
        b"41",
        b"1700000000000",
    )
    counted = metrics.registry.get_sample_value(
        "relay_records_dead_lettered_total", {"reason": "internal_error"}
    )
    assert counted == 1
