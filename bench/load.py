"""Driving a relay from outside: request records in, result records and webhooks out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.stack import MODEL, get_json

PROMPT = "a panda in a bamboo forest, morning light through the leaves"
PRODUCER_LINGER_MS = 5
RESULT_FETCH_MAX_WAIT_MS = 20
STEADY_TICK_S = 0.01
WEBHOOK_POLL_S = 0.2


def request_value(key: str) -> bytes:
    body = {
        "idempotency_key": key,
        "model": MODEL,
        "input": {"prompt": PROMPT, "size": "1:1", "resolution": "2K", "n": 1},
        "metadata": {"bench": True},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def parse_ts(text: str) -> float:
    """An RFC 3339 timestamp of the result record (``...Z``) as unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=PRODUCER_LINGER_MS, acks=1)


async def produce_burst(bootstrap: str, topic: str, keys: Sequence[str]) -> None:
    """Produce one request per key as fast as the client batches them."""
    producer = _producer(bootstrap)
    await producer.start()
    try:
        sends = [await producer.send(topic, request_value(k), key=k.encode()) for k in keys]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def produce_steady(
    bootstrap: str, topic: str, prefix: str, rate_per_s: float, duration_s: float
) -> list[str]:
    """Produce ``rate_per_s`` requests a second for ``duration_s``; returns the keys sent."""
    producer = _producer(bootstrap)
    await producer.start()
    keys: list[str] = []
    pending: list[asyncio.Future[Any]] = []
    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < duration_s:
            due = int(elapsed * rate_per_s) + 1
            while len(keys) < due:
                key = f"{prefix}-{len(keys)}"
                keys.append(key)
                pending.append(await producer.send(topic, request_value(key), key=key.encode()))
            await asyncio.sleep(STEADY_TICK_S)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return keys


@dataclass(frozen=True, slots=True)
class SeenResult:
    key: str
    event_id: str
    type: str
    completed_at: float
    seen_at: float
    produced_at: float


class ResultReader:
    """Reads the results topic from its start in the background, noting when each record came."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=RESULT_FETCH_MAX_WAIT_MS,
        )
        self.results: dict[str, SeenResult] = {}
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="result-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    self.records += 1
                    value = json.loads(record.value)
                    key = value["idempotency_key"]
                    self.results.setdefault(
                        key,
                        SeenResult(
                            key,
                            value["event_id"],
                            value["type"],
                            parse_ts(value["completed_at"]),
                            now,
                            record.timestamp / 1000,
                        ),
                    )

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(k in self.results for k in keys):
                return True
            await asyncio.sleep(0.1)
        return all(k in self.results for k in keys)


async def receiver_stats(receiver_url: str) -> dict[str, Any]:
    stats = await get_json(f"{receiver_url}/stats")
    assert isinstance(stats, dict)
    return stats


async def receiver_arrivals(receiver_url: str) -> dict[str, float]:
    body = await get_json(f"{receiver_url}/arrivals")
    assert isinstance(body, dict)
    arrivals: dict[str, float] = body["arrivals"]
    return arrivals


async def wait_for_webhooks(
    receiver_url: str, count: int, timeout_s: float, poll_s: float = WEBHOOK_POLL_S
) -> dict[str, Any]:
    """Poll the receiver until ``count`` distinct webhooks arrived (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await receiver_stats(receiver_url)
        if stats["count"] >= count or time.monotonic() >= deadline:
            return stats
        await asyncio.sleep(poll_s)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]
