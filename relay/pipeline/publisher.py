"""Writes result records and dead letters to Kafka."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from relay.metrics import RelayMetrics
from relay.models import ResultRecord
from relay.pipeline.consumer import SourceRecord
from relay.tracing.context import TraceContext

PRODUCER_LINGER_MS = 2
WEBHOOK_URL_HEADER = "webhook-url"
MAX_HEADER_BYTES = 1000


class ResultPublisher:
    """Publishes one result record per request, keyed by the idempotency key (DESIGN §3)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        result_topic: str,
        dead_letter_topic: str,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._result_topic = result_topic
        self._dead_letter_topic = dead_letter_topic
        # Called after each acknowledged send: the Kafka health hook (relay/kafkahealth.py).
        self.on_broker_ok: Callable[[], None] = _nothing

    async def publish(
        self,
        result: ResultRecord,
        *,
        webhook_url: str | None = None,
        body: bytes | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        """Publish the result; the request's ``webhook_url`` rides along in a header for the
        webhook dispatcher (the record's JSON keeps to DESIGN §3), and so does ``trace`` as
        ``traceparent``/``tracestate`` (DESIGN §8). ``body`` is the result already encoded,
        when the caller has it."""
        headers = [
            ("content-type", b"application/json"),
            ("event-id", result.event_id.encode()),
            ("type", result.type.encode()),
        ]
        if webhook_url:
            headers.append((WEBHOOK_URL_HEADER, webhook_url.encode()))
        if trace is not None:
            headers.extend(trace.kafka_headers())
        await self._producer.send_and_wait(
            self._result_topic,
            value=body if body is not None else result.to_json_bytes(),
            key=result.idempotency_key.encode(),
            headers=headers,
        )
        self.on_broker_ok()
        self._metrics.results_published.labels(result.type).inc()

    async def dead_letter(
        self,
        source: SourceRecord,
        reason: str,
        message: str,
        *,
        value: bytes | None,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write ``value`` (the original record's bytes, or what stands for them) under the
        original key, with Kafka Connect-style context headers; ``reason`` is from a closed set
        (it labels ``relay_records_dead_lettered_total``)."""
        headers = [
            ("error.reason", reason.encode()),
            ("error.message", _capped(message)),
            ("original.topic", source.topic.encode()),
            ("original.partition", str(source.partition).encode()),
            ("original.offset", str(source.offset).encode()),
            ("original.timestamp", str(source.timestamp_ms).encode()),
            *((name, _capped(text)) for name, text in extra_headers),
        ]
        await self._producer.send_and_wait(
            self._dead_letter_topic, value=value, key=source.key, headers=headers
        )
        self.on_broker_ok()
        self._metrics.dead_lettered.labels(reason).inc()


def _nothing() -> None:
    return None


def _capped(text: str) -> bytes:
    """A header value of at most ``MAX_HEADER_BYTES`` (a lone surrogate cannot break it)."""
    return text.encode("utf-8", "replace")[:MAX_HEADER_BYTES]


def build_producer(
    kafka: Mapping[str, Any], *, client_id: str, enable_idempotence: bool
) -> AIOKafkaProducer:
    """The relay's one producer; ``kafka`` is :func:`relay.kafka.kafka_client_options`."""
    return AIOKafkaProducer(
        **kafka,
        client_id=client_id,
        acks="all",
        enable_idempotence=enable_idempotence,
        linger_ms=PRODUCER_LINGER_MS,
    )
