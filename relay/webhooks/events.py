"""Operational events: a record on ``RELAY_WEBHOOK_EVENTS_TOPIC`` (when set) each time an
origin's breaker opens or closes in this process, and each time a delivery is dead-lettered.

A record's key is the origin; its value is JSON (docs/webhooks.md)::

    {"type": "webhook.endpoint.opened", "at": "…", "origin": "https://hooks.example.com",
     "relay": "<client id>@<host>", "reason": "10 of 10 attempts unanswered", "cooldown_s": 30.0}

Types: ``webhook.endpoint.opened``, ``webhook.endpoint.closed`` and
``webhook.delivery.dead_lettered`` (with ``idempotency_key``, ``event_id``, ``result_type``,
``reason``, ``attempts``, ``last_status``). Events are best effort: they wait in a bounded queue
and are dropped (counted as ``relay_webhook_internal_errors_total{operation="event"}``) rather
than hold up deliveries when Kafka is slow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from relay.metrics import RelayMetrics
from relay.models import WebhookDeadLetter
from relay.origins import origin_of
from relay.webhooks.breaker import BreakerState

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 1000


class OperationalEvents:
    """Publishes breaker changes and dead letters; does nothing when no topic is set."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        topic: str | None,
        source: str,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self.topic = topic
        self._source = source
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(MAX_QUEUED_EVENTS)

    def circuit_changed(
        self, origin: str, new: BreakerState, reason: str, cooldown_s: float
    ) -> None:
        if new is BreakerState.OPEN:
            self._emit("webhook.endpoint.opened", origin, reason=reason, cooldown_s=cooldown_s)
        elif new is BreakerState.CLOSED:
            self._emit("webhook.endpoint.closed", origin, reason=reason)

    def dead_lettered(self, letter: WebhookDeadLetter) -> None:
        self._emit(
            "webhook.delivery.dead_lettered",
            origin_of(letter.endpoint),
            idempotency_key=letter.idempotency_key,
            event_id=letter.event_id,
            result_type=letter.type,
            reason=letter.reason,
            attempts=letter.attempts,
            last_status=letter.last_status,
        )

    def _emit(self, kind: str, origin: str, **fields: Any) -> None:
        if self.topic is None:
            return
        value = {
            "type": kind,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "origin": origin,
            "relay": self._source,
            **fields,
        }
        try:
            self._queue.put_nowait((origin.encode(), json.dumps(value).encode()))
        except asyncio.QueueFull:
            self._metrics.webhook_internal_errors.labels("event").inc()

    async def run(self) -> None:
        """Send queued events until cancelled; a failed send is counted and dropped."""
        if self.topic is None:
            return
        while True:
            key, value = await self._queue.get()
            try:
                await self._producer.send_and_wait(self.topic, value=value, key=key)
            except KafkaError as exc:
                self._metrics.webhook_internal_errors.labels("event").inc()
                log.warning("publishing a webhook event failed", extra={"reason": repr(exc)})
