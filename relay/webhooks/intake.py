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
import functools
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
from relay.pipeline.unparseable import UNPARSEABLE_ERRORS, find_unparseable
from relay.tracing.context import TRACEPARENT, TRACESTATE, InvalidHeader, TraceContext
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.direct import DirectDelivery, deliveries_of

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
    found = _read(record, default_endpoints)
    return None if found is None else found.deliveries(on_invalid_trace)


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

    def deliveries(self, on_invalid_trace: InvalidHeader | None = None) -> list[WebhookDelivery]:
        record, headers = self.record, self.headers
        trace = TraceContext.parse(
            headers.get(TRACEPARENT), headers.get(TRACESTATE), on_invalid_trace or _ignore_invalid
        )
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
        """Schedule the batch's deliveries (those this process has not scheduled itself), then
        commit past it; ``False`` when scheduling gave up because the intake is stopping."""
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

    async def _not_scheduled_here(self, results: list[_Result]) -> list[WebhookDelivery]:
        """The deliveries of ``results`` this process has not scheduled itself (waiting first
        for those it is scheduling right now)."""
        if self._direct is None:
            return [d for found in results for d in found.deliveries(self._invalid_trace_header)]
        ids = [found.delivery_ids() for found in results]
        await self._direct.settled([i for group in ids for i in group])
        return [
            d
            for found, group in zip(results, ids, strict=True)
            if not self._direct.scheduled_here(group)
            for d in found.deliveries(self._invalid_trace_header)
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
