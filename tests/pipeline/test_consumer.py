"""The consumer over a fake Kafka consumer and the real dispatcher over fakes (no service): a record
that cannot be carried through is dead-lettered and its partition's offsets move past it; work
parked at a closed credentials gate does not hold up a shutdown."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from relay.backoff import Backoff
from relay.exceptions import OperatorError
from relay.models import payload_fingerprint
from relay.pipeline.consumer import RequestConsumer
from relay.pipeline.idempotency import KeyState
from relay.retry import RetryPolicy
from tests.pipeline.fakes import MODEL, Harness, request

TP = TopicPartition("requests", 0)


@dataclass
class Record:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()  # as aiokafka's ConsumerRecord has


@dataclass
class FakeKafkaConsumer:
    """Hands out the records of one partition from its position, as aiokafka's consumer does."""

    records: list[Record]
    position: int = 0
    paused: set[TopicPartition] = field(default_factory=set)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    commit_errors: list[Exception] = field(default_factory=list)

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def getmany(self, timeout_ms: int = 0, max_records: int = 1) -> dict[Any, Any]:
        batch = [r for r in self.records if r.offset >= self.position][:max_records]
        if TP in self.paused or not batch:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.position = batch[-1].offset + 1
        return {TP: batch}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.commits.append(dict(offsets))

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, len(self.records))

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits[-1][tp] if self.commits else None


def _records(*bodies: tuple[str, dict[str, Any]]) -> list[Record]:
    return [Record(i, k.encode(), json.dumps(b).encode()) for i, (k, b) in enumerate(bodies)]


@pytest.fixture
async def running() -> AsyncIterator[tuple[Harness, FakeKafkaConsumer, RequestConsumer]]:
    h = Harness(max_attempts=3)
    kafka = FakeKafkaConsumer(
        _records(("k0", request("k0")), ("k1", request("k1")), ("k2", request("k2")))
    )
    consumer = RequestConsumer(
        kafka,
        h.processor.process,
        h.metrics,
        h.gate,
        topic="requests",
        max_in_flight_per_partition=2,
        max_in_flight=10,
        commit_interval_s=0.01,
        retry=RetryPolicy(
            Backoff(0.001, 0.002, random.Random(1)),
            h.metrics.retries,
            scope="consumer",
            max_attempts=3,
            outages_unbounded=True,
        ),
        handover=h.handover,
    )
    consumer.subscribe()
    await consumer.on_partitions_assigned([TP])
    yield h, kafka, consumer
    consumer.stop_fetching()


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_record_that_cannot_be_carried_through_does_not_hold_its_partition(
    running: tuple[Harness, FakeKafkaConsumer, RequestConsumer],
) -> None:
    h, kafka, consumer = running
    # The second record's key has a Redis record this relay cannot read (another version's).
    fp = payload_fingerprint(MODEL, request("k1")["input"])
    h.store.hashes["k1"] = {"fp": fp, "state": "archived"}
    kafka.commit_errors.append(KafkaConnectionError())
    loop = asyncio.create_task(consumer.run())
    await _until(lambda: bool(kafka.commits) and kafka.commits[-1] == {TP: 3})
    consumer.stop_fetching()
    await asyncio.wait_for(loop, 5.0)
    assert sorted(r.idempotency_key for r, _ in h.publisher.results) == ["k0", "k2"]
    assert [(d.key, d.reason) for d in h.publisher.dead_letters] == [(b"k1", "internal_error")]
    assert h.metric("relay_retries_total", scope="lifecycle", reason="internal") == 2
    assert h.metric("relay_retries_total", scope="consumer", reason="kafka") == 1
    assert h.metric("relay_tasks_in_flight") == 0


async def test_shutdown_with_the_gate_closed_hands_parked_work_back_at_once(
    running: tuple[Harness, FakeKafkaConsumer, RequestConsumer],
) -> None:
    h, kafka, consumer = running
    h.client.errors["submit"].append(OperatorError(401, "invalid api key"))
    loop = asyncio.create_task(consumer.run())
    await _until(lambda: not h.gate.is_open and kafka.paused == {TP})
    await asyncio.sleep(0.05)
    assert len(h.store.hashes) == 2, "two records in flight (the partition's bound), parked"
    consumer.stop_fetching()
    await asyncio.wait_for(loop, 5.0)
    started = time.monotonic()
    await asyncio.wait_for(consumer.drain(grace_s=30.0), 5.0)
    assert time.monotonic() - started < 1.0, "no grace period for work that cannot move"
    assert {h.store.record(k).state for k in h.store.hashes} == {KeyState.CLAIMED}
    assert h.publisher.results == []
    assert {c[TP] for c in kafka.commits} <= {0}, "parked records stay uncommitted"
    assert h.metric("relay_tasks_in_flight") == 0
