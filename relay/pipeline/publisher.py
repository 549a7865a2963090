"""Writes result records and dead letters to Kafka.

A record the broker (or the client's ``max_request_size``) refuses as too large is never sent
again as it was: that would fail the same way for ever and hold the partition. A result goes out
again without its trace headers (a producer's ``traceparent``/``tracestate`` are bounded when read,
but the broker's limit is not ours to know); still too large, it raises ``RecordTooLarge`` and the
lifecycle dead-letters it. Every send after a refusal goes in a batch of its own: the producer
batches records of one partition together and the broker refuses a batch as a whole, so the
refusal may have been another record's. A dead letter goes out again with its value cut to
``DEAD_LETTER_KEPT_VALUE_BYTES`` (then empty) and its key to ``MAX_DEAD_LETTER_KEY_BYTES``,
headers ``original.size`` and ``original.truncated: true`` saying so; if even that is refused
it is dropped with an error log. Each case counts in
``relay_publish_too_large_total{topic, action}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from relay.exceptions import RecordTooLarge
from relay.metrics import RelayMetrics
from relay.models import ResultRecord
from relay.pipeline.consumer import SourceRecord
from relay.tracing.context import TraceContext

log = logging.getLogger(__name__)

PRODUCER_LINGER_MS = 2
WEBHOOK_URL_HEADER = "webhook-url"
MAX_HEADER_BYTES = 1000
# What is kept of a dead letter's value when the whole of it is refused as too large.
DEAD_LETTER_KEPT_VALUE_BYTES = 64 * 1024
MAX_DEAD_LETTER_KEY_BYTES = 1024
# The client's own size check (MessageSizeTooLargeError, RecordTooLargeError) and the broker's.
TOO_LARGE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)

# A record batch of one record: the batch header (61 bytes) and the record's varints, rounded up.
BATCH_OVERHEAD_BYTES = 100
HEADER_OVERHEAD_BYTES = 10
# aiokafka's default batch size.
DEFAULT_MAX_BATCH_BYTES = 16384

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class PublishedResult:
    """A result on its way to the results topic: its bytes and what its headers say (for the
    webhook fast path, ``relay.webhooks.direct``)."""

    key: str
    event_id: str
    type: str
    body: bytes
    webhook_url: str | None
    trace: TraceContext | None


# Told of each result as it is handed to the producer, with the future of the broker's answer
# (``RecordMetadata``); called before the record can reach the broker, never waited for.
OnPublish = Callable[[PublishedResult, "asyncio.Future[Any]"], None]


class ResultPublisher:
    """Publishes one result record per request, keyed by the idempotency key (DESIGN §3)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        result_topic: str,
        dead_letter_topic: str,
        max_message_bytes: Mapping[str, int] | None = None,
        on_publish: OnPublish | None = None,
    ) -> None:
        """``max_message_bytes``: each topic's limit as the broker reports it
        (``relay.topics.max_message_bytes``): a record over it is not sent at all.
        ``on_publish`` is told of every result as it is sent (see ``OnPublish``)."""
        self._producer = producer
        self._limits = dict(max_message_bytes or {})
        self._metrics = metrics
        self._result_topic = result_topic
        self._dead_letter_topic = dead_letter_topic
        self._partitioner = DefaultPartitioner()
        self.on_publish = on_publish
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
        when the caller has it. Raises ``RecordTooLarge`` when Kafka refuses the result's size
        even without its trace headers."""
        headers: Headers = [
            ("content-type", b"application/json"),
            ("event-id", result.event_id.encode()),
            ("type", result.type.encode()),
        ]
        if webhook_url:
            headers.append((WEBHOOK_URL_HEADER, webhook_url.encode()))
        value = body if body is not None else result.to_json_bytes()
        key = result.idempotency_key.encode()
        trace_headers = trace.kafka_headers() if trace is not None else []
        try:
            self._check_size(self._result_topic, value, key, headers + trace_headers)
            sent = await self._producer.send(
                self._result_topic, value=value, key=key, headers=headers + trace_headers
            )
            if self.on_publish is not None:
                self.on_publish(
                    PublishedResult(
                        key=result.idempotency_key,
                        event_id=result.event_id,
                        type=result.type,
                        body=value,
                        webhook_url=(webhook_url or "").strip() or None,
                        trace=trace,
                    ),
                    sent,
                )
            await sent
        except TOO_LARGE_ERRORS:
            # Not offered again: the intake schedules the deliveries of whatever gets published.
            await self._publish_alone(result, value, key, headers, trace_headers)
        self.on_broker_ok()
        self._metrics.results_published.labels(result.type).inc()

    async def _publish_alone(
        self, result: ResultRecord, value: bytes, key: bytes, headers: Headers, trace: Headers
    ) -> None:
        """After a refusal as too large: the batch refused may have been another record's, so
        the result goes again alone in its batch; then alone without its trace headers."""
        try:
            await self._send_alone(self._result_topic, value, key, headers + trace)
            return
        except TOO_LARGE_ERRORS as exc:
            if not trace:
                raise RecordTooLarge(f"the result is too large for Kafka ({exc})") from exc
        self._metrics.publish_too_large.labels("result", "without_trace").inc()
        log.warning(
            "result refused as too large; publishing it without its trace headers",
            extra={"idempotency_key": result.idempotency_key, "bytes": len(value)},
        )
        try:
            await self._send_alone(self._result_topic, value, key, headers)
        except TOO_LARGE_ERRORS as again:
            raise RecordTooLarge(f"the result is too large for Kafka ({again})") from again

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
        (it labels ``relay_records_dead_lettered_total``). Too large, it is cut (see the module)."""
        headers: Headers = [
            ("error.reason", reason.encode()),
            ("error.message", _capped(message)),
            ("original.topic", source.topic.encode()),
            ("original.partition", str(source.partition).encode()),
            ("original.offset", str(source.offset).encode()),
            ("original.timestamp", str(source.timestamp_ms).encode()),
            *((name, _capped(text)) for name, text in extra_headers),
        ]
        try:
            await self._send(self._dead_letter_topic, value, source.key, headers)
        except TOO_LARGE_ERRORS:
            if not await self._dead_letter_cut(source, reason, value, headers):
                return
        self.on_broker_ok()
        self._metrics.dead_lettered.labels(reason).inc()

    async def _dead_letter_cut(
        self, source: SourceRecord, reason: str, value: bytes | None, headers: Headers
    ) -> bool:
        """Send the dead letter again with its value cut (then empty) and its key bounded;
        ``False`` when even that is refused (the dead letter is dropped, logged)."""
        size = len(value or b"")
        key = source.key
        if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
            headers = [*headers, ("original.key.size", str(len(key)).encode())]
            key = key[:MAX_DEAD_LETTER_KEY_BYTES]
        with suppress(*TOO_LARGE_ERRORS):  # the refused batch may have been another record's
            await self._send_alone(self._dead_letter_topic, value, source.key, headers)
            return True
        cut = [*headers, ("original.size", str(size).encode()), ("original.truncated", b"true")]
        for kept in (DEAD_LETTER_KEPT_VALUE_BYTES, 0):
            try:
                await self._send_alone(self._dead_letter_topic, (value or b"")[:kept], key, cut)
            except TOO_LARGE_ERRORS:
                continue
            self._metrics.publish_too_large.labels("dead_letter", "truncated").inc()
            log.warning(
                "dead letter refused as too large; written truncated",
                extra={"reason": reason, "bytes": size, "kept_bytes": min(size, kept)},
            )
            return True
        self._metrics.publish_too_large.labels("dead_letter", "dropped").inc()
        log.error(
            "dead letter refused as too large even truncated; dropped",
            extra={"reason": reason, "partition": source.partition, "offset": source.offset},
        )
        return False

    async def _send_alone(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Send one record in a batch of its own (to the partition its key picks), so that a
        refusal as too large is about this record and no other."""
        if value is None and key is None:
            value = b""
        self._check_size(topic, value, key, headers)
        partitions = sorted(await self._producer.partitions_for(topic))
        partition = self._partitioner(key, partitions, partitions)
        batch = self._producer.create_batch()
        batch.append(key=key, value=value, timestamp=None, headers=headers)
        batch.close()
        await (await self._producer.send_batch(batch, topic, partition=partition))

    async def _send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        self._check_size(topic, value, key, headers)
        if value is None and key is None:
            value = b""  # a record needs one of them; a placeholder has neither
        await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)

    def _check_size(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Refuse here what the broker would refuse: a refusal there, with idempotence on,
        breaks the partition's sequence numbers for every later record."""
        limit = self._limits.get(topic)
        if limit is None:
            return
        size = BATCH_OVERHEAD_BYTES + len(value or b"") + len(key or b"")
        size += sum(
            len(name.encode()) + len(data) + HEADER_OVERHEAD_BYTES for name, data in headers
        )
        if size > limit:
            raise MessageSizeTooLargeError(f"{size} bytes, over {topic}'s {limit}")


def _nothing() -> None:
    return None


def _capped(text: str) -> bytes:
    """A header value of at most ``MAX_HEADER_BYTES`` (a lone surrogate cannot break it)."""
    return text.encode("utf-8", "replace")[:MAX_HEADER_BYTES]


def build_producer(
    kafka: Mapping[str, Any],
    *,
    client_id: str,
    enable_idempotence: bool,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> AIOKafkaProducer:
    """The relay's one producer; ``kafka`` is :func:`relay.kafka.kafka_client_options`.
    ``max_batch_bytes``: below the smallest ``max.message.bytes`` of the topics it writes to,
    so that records batched together are never refused together (a single record larger than
    it goes in a batch of its own, checked by the publisher)."""
    return AIOKafkaProducer(
        **kafka,
        client_id=client_id,
        acks="all",
        enable_idempotence=enable_idempotence,
        linger_ms=PRODUCER_LINGER_MS,
        max_batch_size=max(1, max_batch_bytes),
    )
