"""No record can stop the pipeline (issue 10): a hostile corpus on one partition, between valid
records, on a real broker, Redis and the simulator.

Each hostile record gets its documented outcome (README, "What happens to each record"), the
group's committed offset reaches the end of the partition, nothing refused is charged, every charge
has its terminal result, ``/metrics`` stays small with bounded labels, and the relay stays ready.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from relay.metrics import MINDVIDEO_ERROR_CODES, OTHER_LABEL, RELAY_ERROR_CODES
from tests.support.hostile import MODEL, Hostile, hostile_corpus
from tests.support.pipeline import Pipeline, Result

PARTITION = 0
RESULT_TIMEOUT_S = 120.0
COMMIT_TIMEOUT_S = 30.0
MAX_METRICS_BYTES = 64 * 1024
UNKNOWN_MODELS = 20  # distinct models no one knows: each would be a label series if unbounded


def _valid(key: str, model: str = MODEL) -> tuple[bytes, bytes]:
    body = {"model": model, "input": {"prompt": f"prompt of {key}"}, "metadata": {"k": key}}
    return key.encode(), json.dumps(body).encode()


async def _produce_to_one_partition(
    pipeline: Pipeline, records: list[tuple[bytes | None, bytes | None]]
) -> list[int]:
    """Produce in order to one partition; the offset of each record."""
    producer = AIOKafkaProducer(
        bootstrap_servers=pipeline.bootstrap,
        enable_idempotence=pipeline.enable_idempotence,
        max_request_size=1024 * 1024,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(pipeline.requests_topic, value=v, key=k, partition=PARTITION)
            for k, v in records
        ]
        return [(await future).offset for future in sent]
    finally:
        await producer.stop()


async def _committed(pipeline: Pipeline) -> int:
    """The group's committed offset on the partition (an offset fetch; the group is not joined)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=pipeline.bootstrap, group_id=pipeline.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(pipeline.requests_topic, PARTITION)) or 0
    finally:
        await consumer.stop()


async def _wait_committed(pipeline: Pipeline, end: int) -> int:
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    committed = await _committed(pipeline)
    while committed < end and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        committed = await _committed(pipeline)
    return committed


def _expected_result(case: Hostile) -> tuple[str, str | None] | None:
    """(type, error code) of the result the case publishes under ``result_key``, if any."""
    if case.result_key is None:
        return None
    if case.outcome == "request":
        if case.mindvideo_code is None:
            return ("task.succeeded", None)
        return ("request.rejected", case.mindvideo_code)
    return ("request.rejected", case.code)


def _label_values(metrics: str, label: str) -> set[str]:
    return set(re.findall(rf'[{{,]{label}="([^"]*)"', metrics))


async def test_hostile_corpus_on_one_partition(pipeline: Pipeline, unique: str) -> None:
    u = unique[:8]
    relay, port = await pipeline.start_relay()
    corpus = hostile_corpus(f"h-{u}")
    before = [_valid(f"before-{u}-{i}") for i in range(5)]
    after = [_valid(f"after-{u}-{i}") for i in range(5)]
    unknown = [_valid(f"unk-{u}-{i}", f"model-{u}-{i}-" + "y" * 150) for i in range(UNKNOWN_MODELS)]
    records: list[tuple[bytes | None, bytes | None]] = [
        *before,
        *[(c.key, c.value) for c in corpus],
        *unknown,
        *after,
    ]
    offsets = await _produce_to_one_partition(pipeline, records)
    hostile_offsets = dict(zip((c.name for c in corpus), offsets[len(before) :], strict=False))

    expected: dict[str, tuple[str, str | None]] = {}
    for valid_key, _ in [*before, *after]:
        expected[valid_key.decode()] = ("task.succeeded", None)
    for unknown_key, _ in unknown:
        expected[unknown_key.decode()] = ("request.rejected", "model_not_found")
    for case in corpus:
        outcome = _expected_result(case)
        if outcome is not None:
            assert case.result_key is not None
            expected[case.result_key] = outcome
    results = await pipeline.results(set(expected), RESULT_TIMEOUT_S, min_count=len(expected))
    assert relay.returncode is None, "the relay is still running"

    per_key = Counter(r.key for r in results)
    missing = set(expected) - set(per_key)
    assert not missing, f"no result for {sorted(missing)}"
    assert set(per_key) == set(expected), f"unexpected results: {set(per_key) - set(expected)}"
    assert max(per_key.values()) == 1, f"more than one result: {per_key.most_common(3)}"
    by_key: dict[str, Result] = {r.key: r for r in results}
    for key, (kind, code) in expected.items():
        value = by_key[key].value
        got = (value["type"], value["error"]["code"] if value["error"] else None)
        assert got == (kind, code), f"{key}: {got} != {(kind, code)}"
        if kind == "request.rejected":
            assert value["cost_actual"] == 0.0
            assert len(json.dumps(value)) < 16 * 1024, f"{key}: a rejection echoes too much"

    dead_cases = [c for c in corpus if c.outcome == "dead_letter"]
    dead = await pipeline.results(
        set(), RESULT_TIMEOUT_S, topic=pipeline.dlq_topic, min_count=len(dead_cases)
    )
    reasons = {int(r.headers["original.offset"]): r.headers["error.reason"].decode() for r in dead}
    assert len(dead) == len(dead_cases), "one dead letter per undecodable record, no more"
    for case in dead_cases:
        assert reasons.get(hostile_offsets[case.name]) == case.code, case.name

    end = offsets[-1] + 1
    assert await _wait_committed(pipeline, end) == end, "the committed offset reaches the end"

    ledger = await pipeline.sim_get("/_sim/ledger")
    charged = Counter(c["idempotency_key"] for c in ledger["charges"])
    succeeded = {k for k, (kind, _) in expected.items() if kind == "task.succeeded"}
    assert set(charged) == succeeded, "charged exactly the requests that succeeded"
    assert max(charged.values()) == 1
    for charged_key in charged:
        result_type = by_key[charged_key].value["type"]
        assert result_type.startswith("task."), f"{charged_key} charged without its result"

    status, metrics = await pipeline.relay_get(port, "/metrics")
    assert status == 200
    assert len(metrics.encode()) < MAX_METRICS_BYTES, f"/metrics is {len(metrics)} bytes"
    assert _label_values(metrics, "model") <= {MODEL, OTHER_LABEL, "unknown"}
    assert _label_values(metrics, "code") <= RELAY_ERROR_CODES | MINDVIDEO_ERROR_CODES | {
        OTHER_LABEL
    }
    rejected_other = await pipeline.metric(port, "relay_tasks_terminal_total", model=OTHER_LABEL)
    assert rejected_other >= UNKNOWN_MODELS + 1, "unknown models count as 'other'"

    status, body = await pipeline.relay_get(port, "/readyz")
    assert status == 200, body
    assert relay.returncode is None
