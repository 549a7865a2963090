"""Reading one key's result from the results topic, for ``relay submit --wait``.

Results are keyed by the idempotency key and published with Kafka's default partitioner, so one
key's results all live in one partition: the reader assigns only that one. It first reads the
partition from its start up to its end at that moment (a result already published is found at
once instead of waited for), then keeps reading past that end for a new one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from relay.kafka import kafka_client_options, start_kafka_client
from relay.settings import RelaySettings

FETCH_TIMEOUT_MS = 500
TASK_RESULT_TYPES = frozenset({"task.succeeded", "task.failed", "task.cancelled"})


@dataclass
class Published:
    """What the results topic already held for the key when the reader started."""

    task_result: dict[str, Any] | None = None
    rejection: dict[str, Any] | None = None


class KeyResultReader:
    """Follows the results partition of one idempotency key; ``start()`` then ``stop()``."""

    def __init__(self, settings: RelaySettings, key: str) -> None:
        self._settings = settings
        self._key = key.encode()
        self._kafka = kafka_client_options(settings)
        self._consumer = AIOKafkaConsumer(
            **self._kafka,
            client_id=f"{settings.kafka_client_id}-submit",
            group_id=None,
            enable_auto_commit=False,
        )
        self._end: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        try:
            await start_kafka_client(self._consumer, self._kafka)
        except BaseException:
            await self._consumer.stop()  # start() leaves its connections open on failure
            raise
        topic = self._settings.result_topic
        await self._consumer.topics()  # loads the metadata partitions_for_topic reads
        partitions = sorted(self._consumer.partitions_for_topic(topic) or ())
        # A results topic that does not exist yet holds no result: follow partition 0, which
        # is where a topic auto-created with one partition puts everything.
        chosen = DefaultPartitioner()(self._key, partitions, partitions) if partitions else 0
        tp = TopicPartition(topic, chosen)
        self._consumer.assign([tp])
        self._end = await self._consumer.end_offsets([tp])
        await self._consumer.seek_to_beginning(tp)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def already_published(self) -> Published:
        """The key's results published before ``start()``: the last task result and rejection."""
        found = Published()
        while any([await self._consumer.position(tp) < end for tp, end in self._end.items()]):
            for record in await self._fetch():
                if record.offset >= self._end[_tp_of(record)]:
                    continue
                value = _decode(record.value)
                if value is None:
                    continue
                if value.get("type") in TASK_RESULT_TYPES:
                    found.task_result = value
                elif value.get("type") == "request.rejected":
                    found.rejection = value
        return found

    async def next_result(self, timeout_s: float) -> dict[str, Any] | None:
        """The first result for the key published after ``start()``, or ``None`` at timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in await self._fetch():
                if record.offset < self._end.get(_tp_of(record), 0):
                    continue
                value = _decode(record.value)
                if value is not None:
                    return value
        return None

    async def _fetch(self) -> list[Any]:
        batch = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
        return [r for records in batch.values() for r in records if r.key == self._key]


def _tp_of(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
