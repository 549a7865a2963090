"""The delivery worker: claims due webhook deliveries from Redis and attempts them concurrently.

Each claimed delivery runs in its own task, so a slow origin holds only its own slots and never
the loop. :class:`EndpointAdmission` decides whether it may go now (slot, breaker, rate limit);
if not, it is deferred without using up an attempt. After the last attempt of the schedule, or at
once when the SSRF policy refuses the endpoint, the delivery goes to the dead-letter topic. Every
attempt is added to the delivery's history (``relay webhooks status --key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Gauge
from redis.exceptions import RedisError

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.models import WebhookDelivery
from relay.origins import OriginLabels
from relay.tracing.context import TraceContext
from relay.tracing.spans import NO_TRACING, Tracing
from relay.webhooks.admission import EndpointAdmission
from relay.webhooks.client import MAX_ERROR_CHARS, AttemptResult, WebhookClient
from relay.webhooks.deliveries import ClaimedDelivery, DeliveryStore
from relay.webhooks.finisher import DeliveryFinisher, endpoint_host
from relay.webhooks.history import AttemptRecord
from relay.webhooks.legacy import migrate_legacy

log = logging.getLogger(__name__)

DEFER_JITTER_S = 0.5
RATE_DEFER_JITTER = 0.25
RELEASE_TIMEOUT_S = 2.0
LEGACY_CHECK_INTERVAL_S = 60.0
MAX_SHOWN_ERROR_CHARS = 160
PENDING_BY_ORIGIN_INTERVAL_S = 5.0
# Fast-path deliveries that may wait for a task, beyond RELAY_WEBHOOK_MAX_IN_FLIGHT running.
MAX_WAITING_STARTS = 2000


class DeliveryWorker:
    """Attempts due deliveries; finishes, reschedules or dead-letters each one."""

    def __init__(
        self,
        store: DeliveryStore,
        client: WebhookClient,
        admission: EndpointAdmission,
        finisher: DeliveryFinisher,
        metrics: RelayMetrics,
        labels: OriginLabels,
        *,
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
        self._admission = admission
        self._finisher = finisher
        self._metrics = metrics
        self._labels = labels
        self._max_in_flight = max_in_flight
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        # Leased by the fast path, waiting for a task (``start``), with when they were leased.
        self._waiting: deque[tuple[ClaimedDelivery, float]] = deque()
        self._monotonic = time.monotonic
        # Deliveries of a busy origin kept in the process until they are queued again (``_hold``).
        self._held: dict[str, tuple[ClaimedDelivery, asyncio.TimerHandle]] = {}
        self._full = False  # a claim round found no room: a finished task wakes the loop
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._error_backoff = Backoff(0.2, 5.0, self._rng)
        self._gauges_at = 0.0
        self._by_origin_at = 0.0
        # Pending deliveries per origin, all processes (read every few seconds: one field per
        # origin with pending work, which a busy relay may have many of).
        self.pending_by_origin: dict[str, int] = {}
        self._legacy_at = 0.0

    def wake(self) -> None:
        """New deliveries were scheduled here: look for due ones now, not at the next poll."""
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def room(self) -> int:
        """How many more leased deliveries :meth:`start` takes now, running or waiting for a
        task (none while stopping)."""
        if self._stopping:
            return 0
        queued = len(self._tasks) + len(self._waiting) + len(self._held)
        return self._max_in_flight + MAX_WAITING_STARTS - queued

    def start(self, claimed: ClaimedDelivery) -> None:
        """Attempt a delivery this process leased when it scheduled it (the fast path,
        ``relay.webhooks.direct``): at once while fewer than ``RELAY_WEBHOOK_MAX_IN_FLIGHT`` run,
        else as soon as one ends, ahead of anything the worker would claim."""
        if len(self._tasks) < self._max_in_flight and not self._waiting:
            self._spawn(claimed, self._monotonic())
        else:
            self._waiting.append((claimed, self._monotonic()))

    def _start_waiting(self) -> None:
        """Start waiting deliveries while there is room; one that waited for half its lease
        is handed back instead (due at once, for any worker), so no lease runs out unattempted."""
        while self._waiting and len(self._tasks) < self._max_in_flight and not self._stopping:
            claimed, since = self._waiting.popleft()
            if self._monotonic() - since > self._lease_s / 2:
                self._spawn_release(claimed)
            else:
                self._spawn(claimed, since)

    def _hold(self, claimed: ClaimedDelivery, leased_at: float, delay_s: float) -> bool:
        """Keep a delivery whose origin is busy for ``delay_s`` and queue it again, while its
        lease has time left (it is ours until then); ``False``: defer it in Redis instead."""
        if self._stopping or len(self._held) >= self._max_in_flight:
            return False  # a bound: behind a hanging origin, the rest go back to Redis
        if self._monotonic() - leased_at + delay_s > self._lease_s / 2:
            return False
        handle = asyncio.get_running_loop().call_later(delay_s, self._unhold, claimed, leased_at)
        self._held[claimed.delivery.delivery_id] = (claimed, handle)
        return True

    def _unhold(self, claimed: ClaimedDelivery, leased_at: float) -> None:
        del self._held[claimed.delivery.delivery_id]
        self._waiting.append((claimed, leased_at))
        self._start_waiting()

    def _spawn_release(self, claimed: ClaimedDelivery) -> None:
        task = asyncio.create_task(self.release(claimed), name="webhook-release")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _spawn(self, claimed: ClaimedDelivery, leased_at: float) -> None:
        task = asyncio.create_task(
            self._deliver(claimed, leased_at), name=f"webhook-{claimed.delivery.delivery_id[:12]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def run(self) -> None:
        errors = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self._migrate_legacy()
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
        while self._waiting:  # never started: handed back at once
            self._spawn_release(self._waiting.popleft()[0])
        for claimed, handle in self._held.values():
            handle.cancel()
            self._spawn_release(claimed)
        self._held.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _migrate_legacy(self) -> None:
        """Move deliveries left by a relay before sharding (checked once a minute)."""
        now = self._clock()
        if now - self._legacy_at < LEGACY_CHECK_INTERVAL_S:
            return
        self._legacy_at = now
        moved = await migrate_legacy(self._store, now)
        if moved:
            log.info("moved webhook deliveries into shards", extra={"deliveries": moved})

    async def _claim_due(self) -> bool:
        """Start what is due; ``True`` when more may be due right away."""
        free = self._max_in_flight - len(self._tasks) - len(self._waiting)
        if free <= 0:
            self._full = True
            return False
        now = self._clock()
        refs = await self._store.due(now, free)
        leased_at = self._monotonic()
        for claimed in await self._store.claim(refs, now, self._lease_s):
            self._spawn(claimed, leased_at)
        return len(refs) == free

    async def _idle(self) -> None:
        timeout = self._poll_interval_s
        if len(self._tasks) < self._max_in_flight:
            next_due = await self._store.next_due()
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _refresh_gauges(self) -> None:
        now = self._clock()
        if now - self._gauges_at < self._poll_interval_s:
            return
        self._gauges_at = now
        open_origins = self._admission.guards.open_origins()
        self._metrics.webhook_circuit_open_endpoints.set(len(open_origins))
        self._set_by_label(
            self._metrics.webhook_endpoint_circuit_open, dict.fromkeys(open_origins, 1)
        )
        self._metrics.webhook_unproven_in_flight.set(self._admission.unproven_in_flight)
        self._metrics.webhook_pending_retries.set(await self._store.pending())
        if now - self._by_origin_at >= PENDING_BY_ORIGIN_INTERVAL_S:
            self._by_origin_at = now
            self.pending_by_origin = await self._store.pending_by_origin()
            self._set_by_label(self._metrics.webhook_pending_deliveries, self.pending_by_origin)

    def _set_by_label(self, gauge: Gauge, by_origin: dict[str, int]) -> None:
        totals = dict.fromkeys([*self._labels.configured, "other"], 0)
        for origin, n in by_origin.items():
            totals[self._labels(origin)] += n
        for label, n in totals.items():
            gauge.labels(label).set(n)

    def _invalid_trace_header(self, header: str) -> None:
        """Kept in Redis by an older relay, or written to the results topic by someone else."""
        self._metrics.trace_context_invalid.labels(header).inc()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._start_waiting()
        if self._full:
            # Only a worker that ran out of room needs to look again now: the others find the
            # next due delivery at the next poll (a Redis round trip per delivery otherwise).
            self._full = False
            self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())

    async def _deliver(self, claimed: ClaimedDelivery, leased_at: float) -> None:
        origin, label = claimed.origin, self._labels(claimed.origin)
        try:
            verdict = await self._admission.admit(origin)
        except RedisError as exc:
            self._metrics.webhook_internal_errors.labels("rate_limit").inc()
            log.warning("the webhook rate limiter failed", extra={"reason": repr(exc)})
            await self._defer(claimed, 1.0)
            return
        except asyncio.CancelledError:
            await self.release(claimed)
            raise
        if not verdict.go:
            if verdict.reason == "circuit_open":
                self._metrics.webhook_attempts.labels(label, "circuit_open").inc()
                delay = verdict.defer_s + self._rng.uniform(0.0, DEFER_JITTER_S)
            elif verdict.reason == "unproven":
                self._metrics.webhook_unproven_deferred.inc()
                delay = verdict.defer_s * self._rng.uniform(0.5, 1.5)
            elif verdict.reason == "rate_limited":
                self._metrics.webhook_rate_limited.labels(label, "deferred").inc()
                delay = verdict.defer_s * self._rng.uniform(1.0, 1.0 + RATE_DEFER_JITTER)
            else:
                delay = verdict.defer_s * self._rng.uniform(0.5, 1.5)
                if self._hold(claimed, leased_at, delay):
                    return  # busy origin: tried again from this process, no Redis round trip
            await self._defer(claimed, delay)
            return
        if verdict.waited_s > 0:
            self._metrics.webhook_rate_limited.labels(label, "waited").inc()
        await self._attempt(claimed, origin, label)

    async def _attempt(self, claimed: ClaimedDelivery, origin: str, label: str) -> None:
        d = claimed.delivery
        started = self._clock()
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            result = await self._post(d)
        except asyncio.CancelledError:
            # Shutting down mid-attempt: hand the delivery back now rather than at lease expiry.
            await self.release(claimed)
            raise
        except Exception as exc:  # a failed attempt, counted: never a silent loop
            # The client answers for everything the endpoint or the network does; what is left
            # failed in the relay (a request that cannot be built from the delivery, a bug). It
            # uses up an attempt like any other failure, so the schedule ends it in the DLQ.
            log.error(
                "a webhook attempt failed in the relay; counted as a failed attempt",
                exc_info=exc,
                extra={"event_id": d.event_id, "origin": label},
            )
            result = AttemptResult("error", error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        finally:
            self._admission.release(origin)
        record = AttemptRecord(
            at_ms=int(started * 1000),
            outcome=result.outcome,
            status=result.status,
            latency_ms=int((loop.time() - began) * 1000),
        )
        if result.outcome == "success":
            self._admission.succeeded(origin)
        if result.says_about_endpoint:
            self._admission.guards.breaker(origin).record(result.health, _error_of(result))
        self._metrics.webhook_attempts.labels(label, result.outcome).inc()
        try:
            await self._finisher.conclude(claimed, result, record)
        except RedisError as exc:
            self._metrics.webhook_internal_errors.labels("finish").inc()
            log.warning(
                "recording a webhook attempt failed; it is repeated after the lease expires",
                extra={"event_id": d.event_id, "reason": repr(exc)},
            )
        if result.retryable:
            self._wakeup.set()  # rescheduled: its next attempt may be due before the next poll

    async def _post(self, d: WebhookDelivery) -> AttemptResult:
        """The POST, in the attempt's span: a child of the result's trace context, however long
        after the result and in whichever process (it is kept with the delivery in Redis)."""
        parent = TraceContext.parse(d.traceparent, d.tracestate, self._invalid_trace_header)
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

    async def _defer(self, claimed: ClaimedDelivery, delay_s: float) -> None:
        """Give a delivery back unattempted (its attempt count unchanged)."""
        try:
            await self._store.reschedule(claimed, self._clock() + delay_s)
        except RedisError as exc:
            self._metrics.webhook_internal_errors.labels("reschedule").inc()
            log.warning(
                "deferring a delivery failed; its lease expires", extra={"reason": repr(exc)}
            )
        self._wakeup.set()  # a short deferral may be due before the loop's next poll

    async def release(self, claimed: ClaimedDelivery) -> None:
        """Hand a leased delivery back now (due at once), rather than at lease expiry."""
        with contextlib.suppress(RedisError, TimeoutError):
            await asyncio.wait_for(
                self._store.reschedule(claimed, self._clock()), RELEASE_TIMEOUT_S
            )


def _error_of(result: AttemptResult) -> str:
    """What the status page shows as an origin's last error (a host at most, never a path)."""
    if result.status is not None:
        return f"HTTP {result.status}"
    if not result.error:
        return result.outcome
    return f"{result.outcome}: {result.error}"[:MAX_SHOWN_ERROR_CHARS]
