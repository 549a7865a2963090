"""The delivery worker: claims due webhook deliveries from Redis and attempts them concurrently.

Each claimed delivery runs in its own task, so a slow endpoint holds only its own slots (at most
``max_in_flight_per_endpoint``) and never the loop. A delivery whose endpoint is full waits in this
process for a slot (up to ``BUSY_WAIT_S``, well inside its lease) and is deferred in Redis only if
none frees up: a busy endpoint costs no Redis round trips, and a burst of results to one endpoint
does not turn into a burst of deferrals. One whose circuit breaker is open is deferred until the
breaker's cool-down ends, without using up an attempt. After the last attempt of the schedule, or at
once when the SSRF policy refuses the endpoint, the delivery goes to the webhook dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from yarl import URL

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.models import WebhookDeadLetter, WebhookDeadLetterReason, WebhookDelivery
from relay.tracing.context import TraceContext
from relay.tracing.spans import NO_TRACING, Tracing
from relay.webhooks.breaker import EndpointGuards
from relay.webhooks.client import AttemptResult, WebhookClient
from relay.webhooks.deliveries import ClaimedDelivery, DeliveryStore
from relay.webhooks.schedule import RetrySchedule

log = logging.getLogger(__name__)

BUSY_DEFER_S = 0.5
BUSY_WAIT_S = 5.0
DEAD_LETTER_RETRY_S = 10.0
RELEASE_TIMEOUT_S = 2.0


def endpoint_host(endpoint: str) -> str:
    """What logs show of an endpoint: its host only (paths and queries may carry tokens)."""
    try:
        return URL(endpoint).host or "?"
    except ValueError:
        return "?"


class DeliveryWorker:
    """Attempts due deliveries; finishes, reschedules or dead-letters each one."""

    def __init__(
        self,
        store: DeliveryStore,
        client: WebhookClient,
        guards: EndpointGuards,
        schedule: RetrySchedule,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        dead_letter_topic: str,
        max_in_flight: int,
        lease_s: float,
        poll_interval_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._store = store
        self._tracing = tracing
        self._client = client
        self._guards = guards
        self._schedule = schedule
        self._producer = producer
        self._metrics = metrics
        self._dead_letter_topic = dead_letter_topic
        self._max_in_flight = max_in_flight
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._error_backoff = Backoff(0.2, 5.0, self._rng)
        self._gauges_at = 0.0
        self._capacity_waiters: dict[str, deque[asyncio.Future[bool]]] = {}

    def wake(self) -> None:
        """New deliveries were scheduled here: look for due ones now, not at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        errors = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                busy = await self._claim_due()
                await self._refresh_gauges()
                errors = 0
                if not busy:
                    await self._idle()
            except RedisError as exc:
                errors += 1
                self._metrics.webhook_internal_errors.labels("claim").inc()
                log.warning("claiming webhook deliveries failed", extra={"reason": repr(exc)})
                await asyncio.sleep(self._error_backoff.delay_s(errors))

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let attempts finish for ``grace_s``, then cancel and release them."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _claim_due(self) -> bool:
        """Start what is due; ``True`` when more may be due right away."""
        free = self._max_in_flight - len(self._tasks)
        if free <= 0:
            return False
        now = self._clock()
        ids = await self._store.due_ids(now, free)
        for claimed in await self._store.claim(ids, now, self._lease_s):
            self._start(claimed)
        return len(ids) == free

    async def _idle(self) -> None:
        timeout = self._poll_interval_s
        if len(self._tasks) < self._max_in_flight:
            next_due = await self._store.next_due()
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _refresh_gauges(self) -> None:
        self._metrics.webhook_circuit_open_endpoints.set(self._guards.open_count())
        now = self._clock()
        if now - self._gauges_at >= self._poll_interval_s:
            self._gauges_at = now
            self._metrics.webhook_pending_retries.set(await self._store.pending())

    def _start(self, claimed: ClaimedDelivery) -> None:
        work = self._when_free(claimed)
        task = asyncio.create_task(work, name=f"webhook-{claimed.delivery.delivery_id[:12]}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _when_free(self, claimed: ClaimedDelivery) -> None:
        """Attempt once the endpoint has a free slot and a closed breaker; else defer."""
        endpoint = claimed.delivery.endpoint
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_WAIT_S
        try:
            while not self._guards.has_capacity(endpoint):
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._capacity_freed(endpoint, remaining):
                    await self._defer(claimed, BUSY_DEFER_S * self._rng.uniform(0.5, 1.5))
                    return
        except asyncio.CancelledError:
            with contextlib.suppress(RedisError, TimeoutError):
                await asyncio.wait_for(
                    self._store.reschedule(claimed, self._clock()), RELEASE_TIMEOUT_S
                )
            raise
        breaker = self._guards.breaker(endpoint)
        if not breaker.allow():
            self._metrics.webhook_attempts.labels("circuit_open").inc()
            await self._defer(claimed, breaker.retry_in_s() + self._rng.uniform(0.0, BUSY_DEFER_S))
            return
        self._guards.acquire(endpoint)
        await self._attempt(claimed)

    async def _capacity_freed(self, endpoint: str, timeout_s: float) -> bool:
        """``True`` when a slot of ``endpoint`` was released within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._capacity_waiters.setdefault(endpoint, deque()).append(waiter)
        expiry = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            expiry.cancel()

    def _release(self, endpoint: str) -> None:
        self._guards.release(endpoint)
        waiters = self._capacity_waiters.get(endpoint)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._capacity_waiters.pop(endpoint, None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())

    async def _defer(self, claimed: ClaimedDelivery, delay_s: float) -> None:
        """Give a delivery back unattempted (its attempt count unchanged)."""
        try:
            await self._store.reschedule(claimed, self._clock() + delay_s)
        except RedisError as exc:
            self._metrics.webhook_internal_errors.labels("reschedule").inc()
            log.warning(
                "deferring a delivery failed; its lease expires", extra={"reason": repr(exc)}
            )

    async def _attempt(self, claimed: ClaimedDelivery) -> None:
        d = claimed.delivery
        try:
            result = await self._post(d)
        except asyncio.CancelledError:
            # Shutting down mid-attempt: hand the delivery back now rather than at lease expiry.
            with contextlib.suppress(RedisError, TimeoutError):
                await asyncio.wait_for(
                    self._store.reschedule(claimed, self._clock()), RELEASE_TIMEOUT_S
                )
            raise
        finally:
            self._release(d.endpoint)
        if result.outcome != "refused":
            self._guards.breaker(d.endpoint).record(result.endpoint_healthy)
        self._metrics.webhook_attempts.labels(result.outcome).inc()
        updated = d.model_copy(
            update={
                "attempts": d.attempts + 1,
                "last_status": result.status,
                "last_error": result.error,
            }
        )
        try:
            await self._conclude(claimed, updated, result)
        except RedisError as exc:
            self._metrics.webhook_internal_errors.labels("finish").inc()
            log.warning(
                "recording a webhook attempt failed; it is repeated after the lease expires",
                extra={"event_id": d.event_id, "reason": repr(exc)},
            )

    async def _post(self, d: WebhookDelivery) -> AttemptResult:
        """The POST, in the attempt's span: a child of the result's trace context, however long
        after the result and in whichever process (it is kept with the delivery in Redis)."""
        parent = TraceContext.parse(d.traceparent, d.tracestate) if d.traceparent else None
        with self._tracing.attempt(parent) as span:
            result = await self._client.post(
                d.endpoint, d.event_id, d.body, self._tracing.outbound(parent)
            )
            if span.recording:
                span.set("relay.event_id", d.event_id)
                span.set("relay.idempotency_key", d.idempotency_key)
                span.set("relay.webhook.attempt", d.attempts + 1)
                span.set("relay.webhook.outcome", result.outcome)
                span.set("server.address", endpoint_host(d.endpoint))
                span.set("http.response.status_code", result.status)
            return result

    async def _conclude(
        self, claimed: ClaimedDelivery, d: WebhookDelivery, result: AttemptResult
    ) -> None:
        context = {
            "event_id": d.event_id,
            "idempotency_key": d.idempotency_key,
            "endpoint_host": endpoint_host(d.endpoint),
            "attempt": d.attempts,
            "outcome": result.outcome,
            "status": result.status,
        }
        if result.outcome == "success":
            await self._store.finish(claimed, "delivered")
            self._metrics.webhook_deliveries.labels("delivered").inc()
            if not d.replayed:
                latency_s = self._clock() - d.published_ms / 1000
                self._metrics.webhook_delivery_latency.observe(max(0.0, latency_s))
            log.debug("webhook delivered", extra=context)
        elif result.outcome == "gone":
            await self._store.finish(claimed, "gone")
            self._metrics.webhook_deliveries.labels("gone").inc()
            log.warning("endpoint answered 410 Gone; delivery stopped", extra=context)
        elif result.outcome == "refused":
            log.warning(
                "webhook endpoint refused by the SSRF policy: %s", result.error, extra=context
            )
            await self._dead_letter(claimed, d, "refused")
        else:
            delay = self._schedule.delay_before(d.attempts, result.retry_after_s)
            if delay is None:
                log.warning("webhook retries exhausted", extra=context)
                await self._dead_letter(claimed, d, "exhausted")
            else:
                log.info("webhook attempt failed; retrying", extra={**context, "delay_s": delay})
                await self._store.reschedule(claimed, self._clock() + delay, d)

    async def _dead_letter(
        self, claimed: ClaimedDelivery, d: WebhookDelivery, reason: WebhookDeadLetterReason
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
            await self._store.reschedule(claimed, self._clock() + DEAD_LETTER_RETRY_S)
            return
        await self._store.finish(claimed, "dead_lettered")
        self._metrics.webhook_dead_lettered.inc()
        self._metrics.webhook_deliveries.labels("dead_lettered").inc()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
