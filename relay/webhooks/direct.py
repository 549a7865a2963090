"""The webhook fast path: the process that publishes a result schedules its deliveries and
attempts them at once, instead of waiting for its own results to come back through the results
topic.

Once a result is on the results topic (the produce acknowledged), the request pipeline hands it
here (``ResultPublisher``'s ``on_published``, wired by ``relay.service`` only where the pipeline
and the dispatcher run in one process). Its deliveries are scheduled in Redis exactly as the
intake would schedule them (same delivery ids, same durable retry state), but already leased to
this process, and each is attempted in a task of the worker at once. Results published while a
Redis call is on its way are scheduled together, one pipeline per batch.

The intake (``relay.webhooks.intake``) still reads every result: it is the backstop for results
published by other processes and for a process that died between publishing and scheduling. For
the deliveries scheduled here it needs no Redis round trip: their ids are remembered in-process
(up to ``MAX_REMEMBERED_IDS``; one forgotten costs the intake a round trip, never a second
delivery). An id is remembered only once Redis has the delivery, so the intake never skips one
that is not durably scheduled. A process killed after scheduling leaves the lease to expire
(``RELAY_WEBHOOK_LEASE_S``), and any worker then attempts it.

Deliveries to an origin with a rate limit (``paced``) are scheduled due at once but not leased:
the worker claims and paces them. Attempted straight from the publish, they started while the
process was busiest, on cold connections, and the time between a send slot and the request's
arrival stretched: a receiver limited to 20/s saw 21–24 in its first second (20–21 through the
worker, measured by ``tests/webhooks/test_rate_limit.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from relay.metrics import RelayMetrics
from relay.models import WebhookDelivery, delivery_id_for
from relay.pipeline.publisher import PublishedResult
from relay.tracing.context import TraceContext
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)

MAX_REMEMBERED_IDS = 50_000
SETTLE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 2.0


def deliveries_of(
    *,
    key: str,
    event_id: str,
    result_type: str,
    body: bytes,
    published_ms: int,
    endpoints: Sequence[str],
    trace: TraceContext | None,
) -> list[WebhookDelivery]:
    """One delivery per endpoint of a result, as both the intake and the fast path build it."""
    return [
        WebhookDelivery(
            endpoint=endpoint,
            event_id=event_id,
            idempotency_key=key,
            type=result_type,
            body=body,
            published_ms=published_ms,
            traceparent=trace.traceparent if trace else None,
            tracestate=trace.tracestate if trace else None,
        )
        for endpoint in dict.fromkeys(endpoints)
    ]


class DirectDelivery:
    """Schedules (leased) and starts the deliveries of results this process publishes."""

    def __init__(
        self,
        store: DeliveryStore,
        worker: DeliveryWorker,
        metrics: RelayMetrics,
        *,
        default_endpoints: Sequence[str],
        lease_s: float,
        paced: Callable[[str], bool] | None = None,
        max_remembered: int = MAX_REMEMBERED_IDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._store = store
        self._worker = worker
        self._metrics = metrics
        self._default_endpoints = list(default_endpoints)
        self._lease_s = lease_s
        self._paced = paced
        self._max_remembered = max_remembered
        self._queue: list[WebhookDelivery] = []
        self._flushing: asyncio.Task[None] | None = None
        # Done once the queued deliveries are scheduled (or failed to be); the future of the
        # batch each delivery on its way is in, for the intake to wait on.
        self._queued: asyncio.Future[None] | None = None
        self._on_the_way: dict[str, asyncio.Future[None]] = {}
        self._stopped = False
        # Delivery ids this process scheduled, oldest first (a dict keeps insertion order).
        self._remembered: dict[str, None] = {}

    def offer(self, published: PublishedResult, sent: asyncio.Future[Any]) -> None:
        """A result is on its way to the results topic (``sent``: the broker's answer, a
        ``RecordMetadata``). Once the broker has it, schedule and attempt its deliveries (not
        waited for: whatever fails here is left to the intake); until then, an intake that
        reads it waits (``settled``)."""
        if self._stopped:
            return
        endpoints = [published.webhook_url] if published.webhook_url else self._default_endpoints
        if not endpoints:
            return  # the intake counts it as no_endpoint
        ids = [delivery_id_for(published.event_id, e) for e in dict.fromkeys(endpoints)]
        for delivery_id in ids:
            self._on_the_way[delivery_id] = sent
        sent.add_done_callback(lambda answer: self._sent(published, endpoints, ids, answer))

    def _sent(
        self,
        published: PublishedResult,
        endpoints: list[str],
        ids: list[str],
        answer: asyncio.Future[Any],
    ) -> None:
        if self._stopped or answer.cancelled() or answer.exception() is not None:
            for delivery_id in ids:  # not published (the publisher retries): nothing to do
                self._on_the_way.pop(delivery_id, None)
            return
        timestamp = getattr(answer.result(), "timestamp", None)
        deliveries = deliveries_of(
            key=published.key,
            event_id=published.event_id,
            result_type=published.type,
            body=published.body,
            published_ms=timestamp if timestamp and timestamp > 0 else int(time.time() * 1000),
            endpoints=endpoints,
            trace=published.trace,
        )
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
        for d in deliveries:
            self._queue.append(d)
            self._on_the_way[d.delivery_id] = self._queued
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="webhook-direct")

    async def settled(self, delivery_ids: list[str]) -> None:
        """Wait (at most ``SETTLE_TIMEOUT_S``) until none of these deliveries is on its way to
        Redis here: the intake reads a result as soon as it is published, usually while its
        deliveries are being scheduled by this process, and should not schedule them twice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        while True:  # acknowledged, a result's deliveries move on to a batch: wait for it too
            waits = {self._on_the_way[i] for i in delivery_ids if i in self._on_the_way}
            left_s = deadline - loop.time()
            if not waits or left_s <= 0:
                return
            await asyncio.wait(waits, timeout=left_s)

    def scheduled_here(self, delivery_ids: list[str]) -> bool:
        """Whether all these deliveries were scheduled by this process (then forgotten: the
        intake reads each result once)."""
        if not delivery_ids or not all(i in self._remembered for i in delivery_ids):
            return False
        for delivery_id in delivery_ids:
            del self._remembered[delivery_id]
        return True

    async def stop(self) -> None:
        """Take no more results; let the batch on its way finish (the intake schedules the
        rest)."""
        self._stopped = True
        task = self._flushing
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            for late in pending:
                late.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _flush(self) -> None:
        """Schedule what is queued, one pipeline at a time, until the queue is empty: results
        published while a batch is on its way go together in the next one."""
        try:
            while self._queue:
                batch, done = self._queue, self._queued
                self._queue, self._queued = [], None
                try:
                    await self._schedule(batch)
                finally:
                    self._settle(batch, done)
        finally:
            self._flushing = None
            self._settle(self._queue, self._queued)  # cancelled: the intake schedules them
            self._queue, self._queued = [], None

    def _settle(self, batch: list[WebhookDelivery], done: asyncio.Future[None] | None) -> None:
        for d in batch:
            self._on_the_way.pop(d.delivery_id, None)
        if done is not None and not done.done():
            done.set_result(None)

    async def _schedule(self, batch: list[WebhookDelivery]) -> None:
        room = self._worker.room()
        paced = self._paced
        now_ready = [d for d in batch if paced is None or not paced(d.endpoint)]
        leased = now_ready[:room]
        taken = {id(d) for d in leased}
        rest = [d for d in batch if id(d) not in taken]
        try:
            claims = await self._store.schedule_leased(leased, self._lease_s, secrets.token_hex(8))
            # No room in the worker, or a rate-limited origin: due now, for the worker to pace.
            unleased = await self._store.schedule(rest, self._clock()) if rest else 0
        except (RedisError, OSError) as exc:
            self._metrics.webhook_internal_errors.labels("schedule").inc()
            log.warning(
                "scheduling webhook deliveries at publish failed; the intake schedules them",
                extra={"reason": repr(exc), "deliveries": len(batch)},
            )
            return
        self._remember(batch)
        scheduled = unleased + sum(c is not None for c in claims)
        self._metrics.webhook_scheduled.labels("publish").inc(scheduled)
        for claimed in claims:
            if claimed is None:
                continue  # scheduled before: whoever scheduled it attempts it
            if self._worker.stopping:
                await self._worker.release(claimed)
            else:
                self._worker.start(claimed)
        if rest:
            self._worker.wake()

    def _remember(self, batch: list[WebhookDelivery]) -> None:
        remembered = self._remembered
        for d in batch:
            remembered[d.delivery_id] = None
        excess = len(remembered) - self._max_remembered
        if excess > 0:
            for old in list(itertools.islice(remembered, excess)):
                del remembered[old]
