"""Records a hostile producer can write that the relay must step over (issue 10, from outside):
a record whose header key is not UTF-8 (the Kafka client cannot even parse it), and a
``traceparent`` built to make the result too large to publish. Real broker, Redis, simulator
and relay process; the bad record is written with kcat, the way an outside producer would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.pipeline import Pipeline
from tests.support.services import require_tool

MODEL = "apimart-doubao-seedance-4-0"
TIMEOUT_S = 30.0


def _body(key: str) -> bytes:
    return json.dumps({"model": MODEL, "input": {"prompt": f"prompt of {key}"}}).encode()


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _kcat_produce(pipeline: Pipeline, key: str, header: bytes, partition: int) -> None:
    """One record with a raw header (``name=value`` bytes), as any librdkafka producer can."""
    subprocess.run(
        [
            require_tool("kcat", "kcat"),
            *("-b", pipeline.bootstrap, "-P", "-t", pipeline.requests_topic),
            *("-p", str(partition), "-k", key, "-K", "\t"),
            b"-H" + header,
        ],
        input=f"{key}\t".encode() + _body(key) + b"\n",
        check=True,
        capture_output=True,
        timeout=20,
    )


# A producer with aiokafka's pure-Python record builder, which sends a header key as whatever its
# ``encode`` returns: how a client in another language writes a header key that is not UTF-8.
RAW_HEADER_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class RawKey(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe"

async def main(bootstrap, topic, key, value):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value=value.encode(), key=key.encode(), partition=0,
            headers=[(RawKey("x"), b"v")],
        )
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


def _produce_raw_header(pipeline: Pipeline, key: str, env: dict[str, str]) -> None:
    argv = [sys.executable, "-c", RAW_HEADER_PRODUCER, pipeline.bootstrap, pipeline.requests_topic]
    subprocess.run(
        [*argv, key, _body(key).decode()],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=30,
    )


async def _charged(pipeline: Pipeline) -> list[str]:
    charges: list[dict[str, Any]] = (await pipeline.sim_get("/_sim/ledger"))["charges"]
    return [c["idempotency_key"] for c in charges]


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_nothing_else_is_lost(
    pipeline: Pipeline, unique: str
) -> None:
    u = unique[:8]
    before, bad, after = f"before-{u}", f"bad-{u}", f"after-{u}"
    others = [f"p1-{i}-{u}" for i in range(3)]
    _, port = await pipeline.start_relay()
    await pipeline.produce([(before.encode(), _body(before))], partition=0)
    _kcat_produce(pipeline, bad, b"\xff\xfe=x", partition=0)
    # Records of another partition fetched beside the bad one must not be lost with it.
    await pipeline.produce([(after.encode(), _body(after))], partition=0)
    await pipeline.produce([(k.encode(), _body(k)) for k in others])

    expected = {before, after, *others}
    results = await pipeline.results(expected, TIMEOUT_S)
    assert {r.key for r in results} == expected, "every valid record has its result"
    dead = await pipeline.results(set(), TIMEOUT_S, topic=pipeline.dlq_topic, min_count=1)
    [letter] = dead
    assert letter.headers["error.reason"] == b"undecodable_record"
    assert letter.headers["original.partition"] == b"0"
    assert letter.headers["original.offset"] == b"1"
    assert letter.value["raw"] in (b"", None)
    assert await pipeline.metric(port, "relay_undecodable_records_total") == 1
    assert bad not in await _charged(pipeline), "nothing of it was submitted"

    async def committed_past_it() -> bool:
        return (await pipeline.committed(0) or 0) >= 2

    await _until("partition 0 committed past the bad record", committed_past_it, TIMEOUT_S)
    status, _ = await pipeline.relay_get(port, "/readyz")
    assert status == 200


async def _create_topic(pipeline: Pipeline, name: str, max_message_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(max_message_bytes)})]
        )
    finally:
        await admin.close()


async def test_a_result_too_large_for_kafka_is_dead_lettered_once_not_retried(
    pipeline: Pipeline, unique: str
) -> None:
    u = unique[:8]
    big, small = f"big-{u}", f"small-{u}"
    results_topic = f"small-results-{unique}"
    await _create_topic(pipeline, results_topic, 3000)
    _, port = await pipeline.start_relay(
        RELAY_RESULT_TOPIC=results_topic, RELAY_MAX_METADATA_BYTES="8192"
    )
    bulky = json.dumps(
        {"model": MODEL, "input": {"prompt": "a panda"}, "metadata": {"blob": "x" * 4000}}
    ).encode()
    await pipeline.produce([(big.encode(), bulky), (small.encode(), _body(small))], partition=0)

    published = await pipeline.results({small}, TIMEOUT_S, topic=results_topic)
    assert [r.key for r in published] == [small], "the small result is published, not the big"
    dead = await pipeline.results(set(), TIMEOUT_S, topic=pipeline.dlq_topic, min_count=1)
    [letter] = dead
    assert letter.key == big
    assert letter.headers["error.reason"] == b"result_too_large"
    assert json.loads(letter.value["raw"])["idempotency_key"] == big, "the result itself"

    async def committed_past_both() -> bool:
        return (await pipeline.committed(0) or 0) >= 2

    await _until("partition 0 committed past both", committed_past_both, TIMEOUT_S)
    # The same request again: its key is done with, nothing is charged or dead-lettered again.
    await pipeline.produce([(big.encode(), bulky)], partition=0)

    async def committed_past_again() -> bool:
        return (await pipeline.committed(0) or 0) >= 3

    await _until("partition 0 committed past the duplicate", committed_past_again, TIMEOUT_S)
    assert (await _charged(pipeline)).count(big) == 1
    again = await pipeline.results(set(), 1.0, topic=pipeline.dlq_topic, min_count=2)
    assert len(again) == 1
    retries = await pipeline.metric(port, "relay_retries_total", scope="lifecycle", reason="kafka")
    assert retries == 0, "too large is final, not an outage"


async def test_the_pure_python_client_on_tansu_steps_over_it_too(
    tansu_pipeline: Pipeline, unique: str
) -> None:
    """The same record on Tansu, read by a relay on aiokafka's pure-Python reader, which raises
    CorruptRecordException instead of UnicodeDecodeError."""
    pipeline, u = tansu_pipeline, unique[:8]
    before, bad, after = f"before-{u}", f"bad-{u}", f"after-{u}"
    pure = {"AIOKAFKA_NO_EXTENSIONS": "1"}
    _, port = await pipeline.start_relay(**pure)
    await pipeline.produce([(before.encode(), _body(before))], partition=0)
    _produce_raw_header(pipeline, bad, pure)
    await pipeline.produce([(after.encode(), _body(after))], partition=0)

    results = await pipeline.results({before, after}, TIMEOUT_S)
    assert {r.key for r in results} == {before, after}
    [letter] = await pipeline.results(set(), TIMEOUT_S, topic=pipeline.dlq_topic, min_count=1)
    assert letter.headers["error.reason"] == b"undecodable_record"
    assert letter.headers["original.offset"] == b"1"
    assert b"CorruptRecordException" in letter.headers["error.message"]
    assert await pipeline.metric(port, "relay_undecodable_records_total") == 1
