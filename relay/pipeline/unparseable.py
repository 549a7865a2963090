"""Records the Kafka client cannot parse, found and stepped over without losing any other.

aiokafka turns a fetched record into a ``ConsumerRecord`` inside ``getmany``; a record it cannot
parse (a header key that is not UTF-8: any producer can write one) raises there, every time the
partition is fetched, and whatever that ``getmany`` had already taken from other partitions is
lost with the exception (their positions moved on). Left alone, the partition stops for good.

Recovery, in two public steps: :func:`rewind` puts every owned partition back where the relay
is (one past the last record it took, else the committed offset, else the beginning: the relay
reads from the earliest), so nothing valid is skipped; :func:`find_unparseable` then reads one
partition alone, one record at a time, handing each record to the consumer as usual, until the
read fails: the partition's position is then exactly the record that cannot be parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException

from relay.pipeline.offsets import PartitionWork

# What aiokafka raises for a record it cannot parse: its C extension lets the UnicodeDecodeError
# (a ValueError) out, its pure-Python reader (AIOKAFKA_NO_EXTENSIONS) wraps it in a
# CorruptRecordException, as it does a CRC that does not match (a corrupt record is skipped too).
UNPARSEABLE_ERRORS = (ValueError, CorruptRecordException)
# How long one read of a partition alone may wait for its records (after a seek, a new fetch).
PROBE_FETCH_TIMEOUT_MS = 500
# Reads without a record before a partition is taken to hold no unparseable record for now.
PROBE_EMPTY_READS = 1
MAX_ERROR_CHARS = 300

Take = Callable[[list[Any]], bool]


async def rewind(consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, PartitionWork]) -> None:
    """Seek every partition in ``work`` to the next record the relay has not taken."""
    for tp, partition in work.items():
        next_offset = partition.next_offset
        if next_offset is None:
            next_offset = await consumer.committed(tp)
        if next_offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, next_offset)


async def find_unparseable(
    consumer: AIOKafkaConsumer, tp: TopicPartition, take: Take
) -> tuple[int, str] | None:
    """Read ``tp`` alone one record at a time, passing each to ``take`` (which returns ``False``
    when it has no room: the search stops there), until a read fails to parse: then the offset
    of that record and the error. ``None`` when the partition's fetched records all parse."""
    empty = 0
    while empty < PROBE_EMPTY_READS:
        try:
            batch = await consumer.getmany(tp, timeout_ms=PROBE_FETCH_TIMEOUT_MS, max_records=1)
        except UNPARSEABLE_ERRORS as exc:
            # The failed read did not move the position: it is the record that broke it.
            return await consumer.position(tp), f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        records = batch.get(tp)
        if not records:
            empty += 1
            continue
        empty = 0
        if not take(records):
            return None
    return None
