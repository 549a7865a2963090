"""Reads the results topic in its own consumer group and schedules one delivery per endpoint.

Being driven by the results topic means a result is never delivered before it is published, and
webhook trouble never holds back the request pipeline. A batch's offsets are committed only after
its deliveries are durably scheduled in Redis; re-reading a result after a crash schedules
nothing new (the delivery id is derived from the event id and the endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.models import WebhookDelivery
from relay.pipeline.publisher import WEBHOOK_URL_HEADER
from relay.pipeline.unparseable import UNPARSEABLE_ERRORS, find_unparseable
from relay.tracing.context import TRACEPARENT, TRACESTATE, InvalidHeader, TraceContext
from relay.webhooks.deliveries import DeliveryStore

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200
# After a second without results, fetch briefly every IDLE_PAUSE_S instead of all the time.
IDLE_AFTER_EMPTY_POLLS = 5
IDLE_FETCH_TIMEOUT_MS = 20
IDLE_PAUSE_S = 0.1
MAX_BATCH_RECORDS = 500


def deliveries_for(
    record: Any, default_endpoints: Sequence[str], on_invalid_trace: InvalidHeader | None = None
) -> list[WebhookDelivery] | None:
    """The deliveries one result record asks for: to its ``webhook-url`` header, else to the
    default endpoints, each carrying the record's trace context when it is valid (a malformed one
    is reported to ``on_invalid_trace`` and not carried). ``None`` when the record is not a result
    the relay can deliver."""
    if record.value is None:
        return None
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
    event_id, result_type = headers.get("event-id"), headers.get("type")
    if not event_id or not result_type:
        try:
            parsed = json.loads(record.value)
            event_id, result_type = parsed["event_id"], parsed["type"]
        except (ValueError, KeyError, TypeError):
            return None
    own = headers.get(WEBHOOK_URL_HEADER, "").strip()
    endpoints = [own] if own else list(default_endpoints)
    key = (record.key or b"").decode("utf-8", "replace")
    trace = TraceContext.parse(
        headers.get(TRACEPARENT), headers.get(TRACESTATE), on_invalid_trace or _ignore_invalid
    )
    return [
        WebhookDelivery(
            endpoint=endpoint,
            event_id=event_id,
            idempotency_key=key,
            type=result_type,
            body=record.value,
            published_ms=record.timestamp or int(time.time() * 1000),
            traceparent=trace.traceparent if trace else None,
            tracestate=trace.tracestate if trace else None,
        )
        for endpoint in dict.fromkeys(endpoints)
    ]


def _ignore_invalid(_header: str) -> None:
    return None


def _collect(taken: list[Any], records: list[Any]) -> bool:
    """Keep ``records``; ``False`` (stop reading) once a batch's worth is kept."""
    taken.extend(records)
    return len(taken) < MAX_BATCH_RECORDS


class ResultIntake:
    """Turns result records into scheduled deliveries, committing only what is scheduled."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: DeliveryStore,
        metrics: RelayMetrics,
        *,
        topic: str,
        default_endpoints: Sequence[str],
        on_scheduled: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._metrics = metrics
        self._topic = topic
        self._default_endpoints = list(default_endpoints)
        self._on_scheduled = on_scheduled
        self._clock = clock
        self._stopping = asyncio.Event()
        self._backoff = Backoff(0.2, 10.0)
        # Per partition, one past the last record scheduled: where to go on from after a fetch
        # that failed to parse.
        self._positions: dict[TopicPartition, int] = {}

    def stop(self) -> None:
        self._stopping.set()

    def _invalid_trace_header(self, header: str) -> None:
        self._metrics.trace_context_invalid.labels(header).inc()

    async def run(self) -> None:
        """Join the group (in the background of the relay's start), then schedule until stopped."""
        self._consumer.subscribe([self._topic])
        await self._consumer.start()  # returns once partitions are assigned
        empty_polls = 0
        while not self._stopping.is_set():
            idle = empty_polls >= IDLE_AFTER_EMPTY_POLLS
            try:
                batch = await self._consumer.getmany(
                    timeout_ms=IDLE_FETCH_TIMEOUT_MS if idle else FETCH_TIMEOUT_MS,
                    max_records=MAX_BATCH_RECORDS,
                )
            except UNPARSEABLE_ERRORS as exc:
                if not await self._recover_from_unparseable(exc):
                    return
                continue
            if not batch:
                empty_polls += 1
                if idle:
                    await self._pause_while_idle()
                continue
            empty_polls = 0
            if not await self._handle(batch):
                return

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> bool:
        """Schedule the batch's deliveries, then commit past it; ``False`` when scheduling
        gave up because the intake is stopping."""
        deliveries: list[WebhookDelivery] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for record in records:
                found = deliveries_for(record, self._default_endpoints, self._invalid_trace_header)
                if found is None:
                    log.warning(
                        "result record without an event id or type; not delivered",
                        extra={"partition": tp.partition, "offset": record.offset},
                    )
                elif not found:
                    self._metrics.webhook_deliveries.labels("no_endpoint").inc()
                deliveries.extend(found or ())
            offsets[tp] = records[-1].offset + 1
        if not await self._schedule(deliveries):
            return False
        self._on_scheduled()
        self._positions.update(offsets)
        await self._commit(offsets)
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Scheduling is idempotent: a result read again schedules nothing new.
            self._metrics.webhook_internal_errors.labels("commit").inc()
            log.warning("committing webhook intake offsets failed", extra={"reason": repr(exc)})

    async def _recover_from_unparseable(self, exc: Exception) -> bool:
        """A result record the Kafka client cannot parse (a header key that is not UTF-8, from
        whoever else may write to the results topic) raised in ``getmany``, with whatever else
        that fetch held: rewind every partition to where the intake is, read each alone one
        record at a time, schedule what parses, and skip the record that does not (it cannot be
        delivered: counted, logged once). ``False`` when the intake is stopping."""
        log.info("a fetched result could not be parsed; looking for it", extra={"error": repr(exc)})
        assigned = list(self._consumer.assignment())
        for tp in assigned:
            position = self._positions.get(tp)
            if position is None:
                position = await self._consumer.committed(tp)
            if position is not None:
                self._consumer.seek(tp, position)
        for tp in assigned:
            taken: list[Any] = []
            found = await find_unparseable(self._consumer, tp, functools.partial(_collect, taken))
            if taken and not await self._handle({tp: taken}):
                return False
            if found is not None:
                offset, error = found
                self._metrics.webhook_undecodable_results.inc()
                log.warning(
                    "a result record the Kafka client cannot parse is skipped, not delivered",
                    extra={"partition": tp.partition, "offset": offset, "error": error},
                )
                self._consumer.seek(tp, offset + 1)
                self._positions[tp] = offset + 1
                await self._commit({tp: offset + 1})
                return True
        return True

    async def _pause_while_idle(self) -> None:
        """Stop fetching for a moment: a broker that answers empty fetches at once instead of
        waiting ``fetch.max.wait.ms`` (noida-db does) would keep the fetcher spinning, a
        quarter of a core for nothing. A result arriving now waits at most ``IDLE_PAUSE_S``."""
        partitions = self._consumer.assignment()
        if partitions:
            self._consumer.pause(*partitions)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), IDLE_PAUSE_S)
        finally:
            still_mine = self._consumer.assignment() & set(partitions)
            if still_mine:
                self._consumer.resume(*still_mine)

    async def _schedule(self, deliveries: list[WebhookDelivery]) -> bool:
        """Schedule until Redis takes them (backoff with jitter); ``False`` if stopped first."""
        failures = 0
        while True:
            try:
                await self._store.schedule(deliveries, self._clock())
                return True
            except RedisError as exc:
                failures += 1
                self._metrics.webhook_internal_errors.labels("schedule").inc()
                delay = self._backoff.delay_s(failures)
                log.warning(
                    "scheduling webhook deliveries failed; retrying",
                    extra={"reason": repr(exc), "attempt": failures, "delay_s": round(delay, 3)},
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return False
                except TimeoutError:
                    continue
