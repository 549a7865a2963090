"""Reads the results topic in its own consumer group and schedules one delivery per endpoint.

Being driven by the results topic means a result is never delivered before it is published, and
webhook trouble never holds back the request pipeline. A batch's offsets are committed only after
its deliveries are durably scheduled in Redis; re-reading a result after a crash schedules
nothing new (the delivery id is derived from the event id and the endpoint).

Where the request pipeline runs in the same process, it schedules its own results' deliveries
as it publishes them (``relay.webhooks.direct``); the intake is then the durable backstop, for
results published by other processes and for a process that died between the two, and skips,
without asking Redis, the deliveries this process has already scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.models import WebhookDelivery, delivery_id_for
from relay.pipeline.publisher import WEBHOOK_URL_HEADER
from relay.tracing.context import TRACEPARENT, TRACESTATE, TraceContext
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.direct import DirectDelivery, deliveries_of

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200
# After a second without results, fetch briefly every IDLE_PAUSE_S instead of all the time.
IDLE_AFTER_EMPTY_POLLS = 5
IDLE_FETCH_TIMEOUT_MS = 20
IDLE_PAUSE_S = 0.1
MAX_BATCH_RECORDS = 500


def deliveries_for(record: Any, default_endpoints: Sequence[str]) -> list[WebhookDelivery] | None:
    """The deliveries one result record asks for: to its ``webhook-url`` header, else to the
    default endpoints, each carrying the record's trace context. ``None`` when the record is not
    a result the relay can deliver."""
    found = _read(record, default_endpoints)
    return None if found is None else found.deliveries()


@dataclass(frozen=True, slots=True)
class _Result:
    """What the intake needs of one result record, read from its headers."""

    record: Any
    event_id: str
    type: str
    endpoints: list[str]
    headers: dict[str, str]

    def delivery_ids(self) -> list[str]:
        return [delivery_id_for(self.event_id, endpoint) for endpoint in self.endpoints]

    def deliveries(self) -> list[WebhookDelivery]:
        record, headers = self.record, self.headers
        trace = TraceContext.parse(headers.get(TRACEPARENT), headers.get(TRACESTATE))
        return deliveries_of(
            key=(record.key or b"").decode("utf-8", "replace"),
            event_id=self.event_id,
            result_type=self.type,
            body=record.value,
            published_ms=record.timestamp or int(time.time() * 1000),
            endpoints=self.endpoints,
            trace=trace,
        )


def _read(record: Any, default_endpoints: Sequence[str]) -> _Result | None:
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
    endpoints = list(dict.fromkeys([own] if own else default_endpoints))
    return _Result(record, str(event_id), str(result_type), endpoints, headers)


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
        direct: DirectDelivery | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_scheduled``: new deliveries are due now. ``direct``: the fast path of this
        process, whose deliveries are in Redis already and need no round trip."""
        self._consumer = consumer
        self._store = store
        self._metrics = metrics
        self._topic = topic
        self._default_endpoints = list(default_endpoints)
        self._on_scheduled = on_scheduled
        self._direct = direct
        self._clock = clock
        self._stopping = asyncio.Event()
        self._backoff = Backoff(0.2, 10.0)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Join the group (in the background of the relay's start), then schedule until stopped."""
        self._consumer.subscribe([self._topic])
        await self._consumer.start()  # returns once partitions are assigned
        empty_polls = 0
        while not self._stopping.is_set():
            idle = empty_polls >= IDLE_AFTER_EMPTY_POLLS
            batch = await self._consumer.getmany(
                timeout_ms=IDLE_FETCH_TIMEOUT_MS if idle else FETCH_TIMEOUT_MS,
                max_records=MAX_BATCH_RECORDS,
            )
            if not batch:
                empty_polls += 1
                if idle:
                    await self._pause_while_idle()
                continue
            empty_polls = 0
            results: list[_Result] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    found = _read(record, self._default_endpoints)
                    if found is None:
                        log.warning(
                            "result record without an event id or type; not delivered",
                            extra={"partition": tp.partition, "offset": record.offset},
                        )
                    elif not found.endpoints:
                        self._metrics.webhook_deliveries.labels("no_endpoint").inc()
                    else:
                        results.append(found)
                offsets[tp] = records[-1].offset + 1
            if not await self._schedule(await self._not_scheduled_here(results)):
                return
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                # Scheduling is idempotent: a result read again schedules nothing new.
                self._metrics.webhook_internal_errors.labels("commit").inc()
                log.warning("committing webhook intake offsets failed", extra={"reason": repr(exc)})

    async def _not_scheduled_here(self, results: list[_Result]) -> list[WebhookDelivery]:
        """The deliveries of ``results`` this process has not scheduled itself (waiting first
        for those it is scheduling right now)."""
        if self._direct is None:
            return [d for found in results for d in found.deliveries()]
        ids = [found.delivery_ids() for found in results]
        await self._direct.settled([i for group in ids for i in group])
        return [
            d
            for found, group in zip(results, ids, strict=True)
            if not self._direct.scheduled_here(group)
            for d in found.deliveries()
        ]

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
                scheduled = await self._store.schedule(deliveries, self._clock())
                if scheduled:
                    self._metrics.webhook_scheduled.labels("intake").inc(scheduled)
                    self._on_scheduled()
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
