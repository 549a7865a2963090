"""Consumes the requests topic in a consumer group and runs many requests per partition at once.

Offsets are committed only below the lowest unfinished record (``offsets.PartitionWork``). A
partition whose work is full is paused (backpressure) and resumed as its tasks finish; everything is
paused while the credentials gate is closed, and ``getmany`` keeps being called so the member stays
in the group. On revocation the finished offsets are committed and the rest of the work is stopped:
its state is in Redis and the next owner resumes it. ``process`` (``relay.pipeline.processor``)
returns once a record is done with, whatever happened: no record holds its partition's commits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from relay.metrics import RelayMetrics
from relay.pipeline.gate import CredentialGate
from relay.pipeline.handover import Handover
from relay.pipeline.offsets import PartitionWork
from relay.pipeline.unparseable import UNPARSEABLE_ERRORS, find_unparseable, rewind
from relay.retry import RetryPolicy
from relay.tracing.context import TraceContext

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200
LAG_INTERVAL_S = 5.0
# How long a revocation waits for submits in flight to be recorded before the group rebalances.
FREEZE_TIMEOUT_S = 10.0


@dataclass(slots=True)
class SourceRecord:
    """Where a request record came from (dead-letter headers), and its bytes until decoded:
    ``take_value`` hands them over once, so a long task keeps no copy of its record alive.
    ``trace``: its W3C ``traceparent``/``tracestate`` headers, when valid (DESIGN §2)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    trace: TraceContext | None = None
    # The Kafka client could not parse the record (a header key that is not UTF-8): it stands
    # for the record at ``offset`` and is dead-lettered as ``undecodable_record``.
    unparseable: str | None = None

    def take_value(self) -> bytes | None:
        value, self.value = self.value, None
        return value


Process = Callable[[SourceRecord], Awaitable[None]]


class RequestConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """Feeds records to ``process`` with bounded concurrency and ordered commits."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        process: Process,
        metrics: RelayMetrics,
        gate: CredentialGate,
        *,
        topic: str,
        max_in_flight_per_partition: int,
        max_in_flight: int,
        commit_interval_s: float,
        retry: RetryPolicy,
        handover: Handover,
    ) -> None:
        """``retry`` paces commit retries (Kafka outages: for as long as they last)."""
        self._consumer = consumer
        self._process = process
        self._metrics = metrics
        self._gate = gate
        self._topic = topic
        self._per_partition = max_in_flight_per_partition
        self._max_in_flight = max_in_flight
        self._commit_interval_s = commit_interval_s
        self._retry = retry
        self._handover = handover
        self._work: dict[TopicPartition, PartitionWork] = {}
        self._parked: dict[TopicPartition, PartitionWork] = {}
        self._lag_labels: set[str] = set()
        self._paused: set[TopicPartition] = set()
        self._stopping = asyncio.Event()
        self._last_unparseable: TopicPartition | None = None
        self.joined = False  # the first assignment arrived (readiness says "joining" until then)
        # Called after each broker round trip that succeeded (a commit, end offsets): the Kafka
        # health hook (relay/kafkahealth.py).
        self.on_broker_ok: Callable[[], None] = _nothing
        # Whether in-flight work can make progress at all (MindVideo reachable): when it cannot,
        # a drain hands it back at once instead of waiting out the grace period.
        self.can_move: Callable[[], bool] = _always

    @property
    def in_flight(self) -> int:
        return sum(len(w) for w in self._work.values())

    def subscribe(self) -> None:
        self._consumer.subscribe([self._topic], listener=self)

    async def run(self) -> None:
        """Fetch, dispatch and commit until ``stop_fetching`` is called."""
        commit_task = asyncio.create_task(self._commit_loop(), name="offset-commits")
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                capacity = self._max_in_flight - self.in_flight
                try:
                    batch = await self._consumer.getmany(
                        timeout_ms=FETCH_TIMEOUT_MS, max_records=max(1, capacity)
                    )
                except UNPARSEABLE_ERRORS as exc:
                    await self._recover_from_unparseable(exc)
                    continue
                for tp, records in batch.items():
                    work = self._work.get(tp)
                    if work is not None:
                        self._take(tp, work, records)
        finally:
            commit_task.cancel()
            await asyncio.gather(commit_task, return_exceptions=True)

    def _take(self, tp: TopicPartition, work: PartitionWork, records: list[Any]) -> bool:
        """Dispatch ``records`` of ``tp`` in order; ``False`` when the partition or the process
        is full (the first record not taken is fetched again later)."""
        for record in records:
            # After a partition comes back, records still being worked on are fetched again
            # from the committed offset: keep the running task.
            if record.offset in work.tasks:
                continue
            if len(work) >= self._per_partition or self.in_flight >= self._max_in_flight:
                # Full: fetch this record again once there is room (bounds are exact).
                self._consumer.seek(tp, record.offset)
                return False
            self._dispatch(tp, work, record)
        return True

    async def _recover_from_unparseable(self, exc: Exception) -> None:
        """The client failed to parse a fetched record, and took with it whatever else that
        fetch returned: rewind every partition to where the relay is, then read each one record
        at a time (``unparseable.find_unparseable``) until the record is found; it becomes a
        placeholder dead-lettered as ``undecodable_record`` and fetching goes on past it."""
        log.info("a fetched record could not be parsed; looking for it", extra={"error": repr(exc)})
        await rewind(self._consumer, self._work)
        # A producer sending many such records sends them to one partition: look there first.
        for tp in sorted(self._work, key=lambda tp: tp != self._last_unparseable):
            work = self._work.get(tp)
            if work is None or tp in self._paused:
                continue
            found = await find_unparseable(
                self._consumer, tp, functools.partial(self._take, tp, work)
            )
            if found is None:
                continue
            offset, error = found
            source = SourceRecord(
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                key=None,
                value=None,
                timestamp_ms=0,
                unparseable=f"the Kafka client could not parse the record: {error}",
            )
            self._metrics.undecodable_records.inc()
            log.warning(
                "a record the Kafka client cannot parse is dead-lettered and skipped",
                extra={"partition": tp.partition, "offset": offset, "error": error},
            )
            self._start(tp, work, source)
            self._consumer.seek(tp, offset + 1)
            self._last_unparseable = tp
            return

    def stop_fetching(self) -> None:
        self._stopping.set()

    async def drain(self, grace_s: float) -> None:
        """Let in-flight work finish for up to ``grace_s``, then stop the rest and commit.

        Work that cannot move is not waited for: tasks parked behind the credentials gate are
        handed back at once (and any that park during the grace period), and while the gate is
        closed, or MindVideo cannot be reached at all (``can_move``), there is no grace period.
        The next owner resumes all of it from Redis.
        """
        works = [*self._work.values(), *self._parked.values()]
        tasks = [t for w in works for t in w.tasks.values()]
        handed_back = self._handover.hand_back_parked()
        if not self._gate.is_open or not self.can_move():
            grace_s = 0.0
        if tasks:
            log.info(
                "draining in-flight work",
                extra={"in_flight": len(tasks), "grace_s": grace_s, "handed_back": handed_back},
            )
            if grace_s > 0:
                await asyncio.wait(tasks, timeout=grace_s)
        await self._stop(works)
        await self.commit()

    async def commit(self, partitions: list[TopicPartition] | None = None) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp in partitions if partitions is not None else list(self._work):
            work = self._work.get(tp)
            position = work.committable() if work is not None else None
            if work is not None and position is not None:
                offsets[tp] = position
        if not offsets:
            return
        await self._consumer.commit(offsets)
        self.on_broker_ok()
        for tp, position in offsets.items():
            self._work[tp].committed = position
        self._metrics.offsets_committed.inc()

    # ConsumerRebalanceListener
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Commit what is finished; park the rest until we know who owns the partition next.

        aiokafka rebalances eagerly: every partition is revoked, even those that come straight
        back. Parked work keeps following its tasks but starts no submit (submits in flight are
        recorded before we rejoin); ``on_partitions_assigned`` lets it go on if the partition
        returns and stops it (the next owner resumes it from Redis) if not.
        """
        mine = [tp for tp in revoked if tp in self._work]
        if not mine:
            return
        try:
            await self.commit(mine)
        except KafkaError as exc:
            log.warning(
                "commit on revocation failed; the next owner re-reads finished records",
                extra={"reason": repr(exc)},
            )
        for tp in mine:
            self._parked[tp] = self._work.pop(tp)
            self._paused.discard(tp)
        parked = [t for tp in mine for t in self._parked[tp].tasks.values()]
        await self._handover.freeze(parked, FREEZE_TIMEOUT_S)
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in mine)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.joined = True
        kept = [tp for tp in assigned if tp in self._parked]
        lost = [tp for tp in self._parked if tp not in assigned]
        for tp in assigned:
            work = self._parked.pop(tp) if tp in self._parked else PartitionWork()
            self._handover.thaw(work.tasks.values())
            self._work[tp] = work
        self._paused.intersection_update(assigned)
        stopped = 0
        for tp in lost:
            for task in self._parked.pop(tp).tasks.values():
                self._handover.stop(task)
                stopped += 1
        log.info(
            "partitions assigned",
            extra={
                "partitions": sorted(tp.partition for tp in assigned),
                "kept_running": sorted(tp.partition for tp in kept),
                "handed_over_tasks": stopped,
            },
        )

    def _dispatch(self, tp: TopicPartition, work: PartitionWork, record: object) -> None:
        source = SourceRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,  # type: ignore[attr-defined]
            key=record.key,  # type: ignore[attr-defined]
            value=record.value,  # type: ignore[attr-defined]
            timestamp_ms=record.timestamp or 0,  # type: ignore[attr-defined]
            trace=TraceContext.from_headers(
                record.headers,  # type: ignore[attr-defined]
                self._invalid_trace_header,
            ),
        )
        self._metrics.records_consumed.inc()
        self._start(tp, work, source)

    def _start(self, tp: TopicPartition, work: PartitionWork, source: SourceRecord) -> None:
        task = asyncio.create_task(
            self._handle(work, source), name=f"record-{tp.partition}-{source.offset}"
        )
        work.add(source.offset, task)
        self._metrics.in_flight.inc()

    def _invalid_trace_header(self, header: str) -> None:
        self._metrics.trace_context_invalid.labels(header).inc()

    async def _handle(self, work: PartitionWork, source: SourceRecord) -> None:
        """Run one record to its end; a cancelled task (handed over) leaves its offset open."""
        try:
            await self._process(source)
            work.done(source.offset)
        finally:
            self._metrics.in_flight.dec()

    async def _stop(self, works: list[PartitionWork]) -> None:
        """Stop the tasks (never inside a submit section) and wait until they have ended."""
        tasks = [t for w in works for t in w.tasks.values()]
        for task in tasks:
            self._handover.stop(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _apply_backpressure(self) -> None:
        full_total = self.in_flight >= self._max_in_flight
        for tp, work in self._work.items():
            should_pause = not self._gate.is_open or full_total or len(work) >= self._per_partition
            if should_pause and tp not in self._paused:
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif not should_pause and tp in self._paused:
                self._consumer.resume(tp)
                self._paused.discard(tp)
        self._metrics.partitions_paused.set(len(self._paused))

    async def _commit_loop(self) -> None:
        """Commit every interval; a failed commit (Kafka out, a rebalance) is tried again after
        a backoff, for as long as it takes, each time with what is finished by then."""
        last_lag, failures = 0.0, 0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._commit_interval_s)
            try:
                await self.commit()
                failures = 0
            except KafkaError as exc:
                failures += 1
                log.warning(
                    "offset commit failed; will retry",
                    extra={"reason": repr(exc), "attempt": failures},
                )
                await self._retry.pause(failures, exc)
                continue
            if loop.time() - last_lag >= LAG_INTERVAL_S:
                last_lag = loop.time()
                await self._measure_lag()

    async def _measure_lag(self) -> None:
        """Records not yet finished per partition: log end offset minus the first unfinished."""
        owned = list(self._work)
        try:
            ends = await self._consumer.end_offsets(owned) if owned else {}
        except KafkaError as exc:
            log.info("could not read end offsets for the lag metric", extra={"reason": repr(exc)})
            self.forget_lag()
            return
        if owned:
            self.on_broker_ok()
        shown = set()
        for tp, end in ends.items():
            work = self._work.get(tp)
            position = work.position() if work is not None else None
            if position is None:
                committed = await self._consumer.committed(tp)
                position = committed if committed is not None else end
            label = str(tp.partition)
            self._metrics.consumer_lag.labels(label).set(max(0, end - position))
            shown.add(label)
        for label in self._lag_labels - shown:
            self._metrics.consumer_lag.remove(label)
        self._lag_labels = shown

    def forget_lag(self) -> None:
        """Drop the lag gauges: while Kafka is out their last values would only look current."""
        for label in self._lag_labels:
            self._metrics.consumer_lag.remove(label)
        self._lag_labels = set()


def _always() -> bool:
    return True


def _nothing() -> None:
    return None
