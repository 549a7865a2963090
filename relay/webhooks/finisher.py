"""What happens to a delivery after an attempt: finished, retried on the schedule, or
dead-lettered.

| outcome | next |
|---|---|
| success | finished (``delivered``); latency observed unless replayed |
| gone (410) | finished (``gone``), a warning; no dead letter |
| refused (SSRF) | dead-lettered at once, reason ``refused`` |
| anything else | retried after the schedule's next delay (``Retry-After`` honoured), or
  dead-lettered with reason ``exhausted`` after the last attempt |

If the dead-letter topic cannot be written, the delivery stays in Redis and is tried again
``DEAD_LETTER_RETRY_S`` later (one more attempt).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from yarl import URL

from relay.metrics import RelayMetrics
from relay.models import WebhookDeadLetter, WebhookDeadLetterReason, WebhookDelivery
from relay.webhooks.client import AttemptResult
from relay.webhooks.deliveries import ClaimedDelivery, DeliveryStore
from relay.webhooks.events import OperationalEvents
from relay.webhooks.history import AttemptRecord
from relay.webhooks.schedule import RetrySchedule

log = logging.getLogger(__name__)

DEAD_LETTER_RETRY_S = 10.0


def endpoint_host(endpoint: str) -> str:
    """What logs show of an endpoint: its host only (paths and queries may carry tokens)."""
    try:
        return URL(endpoint).host or "?"
    except ValueError:
        return "?"


class DeliveryFinisher:
    """Concludes attempts: writes the outcome to Redis, the dead-letter topic and the events."""

    def __init__(
        self,
        store: DeliveryStore,
        schedule: RetrySchedule,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        events: OperationalEvents,
        *,
        dead_letter_topic: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._schedule = schedule
        self._producer = producer
        self._metrics = metrics
        self._events = events
        self._dead_letter_topic = dead_letter_topic
        self._clock = clock

    async def conclude(
        self, claimed: ClaimedDelivery, result: AttemptResult, record: AttemptRecord
    ) -> None:
        d = claimed.delivery.model_copy(
            update={
                "attempts": claimed.delivery.attempts + 1,
                "last_status": result.status,
                "last_error": result.error,
            }
        )
        context = {
            "event_id": d.event_id,
            "idempotency_key": d.idempotency_key,
            "endpoint_host": endpoint_host(d.endpoint),
            "attempt": d.attempts,
            "outcome": result.outcome,
            "status": result.status,
        }
        if result.outcome == "success":
            await self._store.finish(claimed, "delivered", record)
            self._metrics.webhook_deliveries.labels("delivered").inc()
            if not d.replayed:
                latency_s = self._clock() - d.published_ms / 1000
                self._metrics.webhook_delivery_latency.observe(max(0.0, latency_s))
            log.debug("webhook delivered", extra=context)
        elif result.outcome == "gone":
            await self._store.finish(claimed, "gone", record)
            self._metrics.webhook_deliveries.labels("gone").inc()
            log.warning("endpoint answered 410 Gone; delivery stopped", extra=context)
        elif result.outcome == "refused":
            log.warning(
                "webhook endpoint refused by the SSRF policy: %s", result.error, extra=context
            )
            await self._dead_letter(claimed, d, "refused", record)
        else:
            delay = self._schedule.delay_before(d.attempts, result.retry_after_s)
            if delay is None:
                log.warning("webhook retries exhausted", extra=context)
                await self._dead_letter(claimed, d, "exhausted", record)
            else:
                log.info("webhook attempt failed; retrying", extra={**context, "delay_s": delay})
                await self._store.reschedule(claimed, self._clock() + delay, d, record)

    async def _dead_letter(
        self,
        claimed: ClaimedDelivery,
        d: WebhookDelivery,
        reason: WebhookDeadLetterReason,
        record: AttemptRecord,
    ) -> None:
        letter = WebhookDeadLetter(
            endpoint=d.endpoint,
            event_id=d.event_id,
            idempotency_key=d.idempotency_key,
            type=d.type,
            reason=reason,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            published_ms=d.published_ms,
            traceparent=d.traceparent,
            tracestate=d.tracestate,
        )
        try:
            await self._producer.send_and_wait(
                self._dead_letter_topic,
                value=d.body,
                key=d.idempotency_key.encode(),
                headers=letter.headers(),
            )
        except KafkaError as exc:
            # Keep it durable in Redis and try the dead letter again later (one more attempt).
            self._metrics.webhook_internal_errors.labels("dead_letter").inc()
            log.warning("writing a webhook dead letter failed", extra={"reason": repr(exc)})
            updated = d.model_copy(update={"attempts": d.attempts - 1})
            await self._store.reschedule(
                claimed, self._clock() + DEAD_LETTER_RETRY_S, updated, record
            )
            return
        await self._store.finish(claimed, "dead_lettered", record)
        self._metrics.webhook_dead_lettered.inc()
        self._metrics.webhook_deliveries.labels("dead_lettered").inc()
        self._events.dead_lettered(letter)
