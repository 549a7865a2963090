"""The lifecycle's decisions on real processes (issues 9 and 10): a task MindVideo forgets, a
shutdown while MindVideo refuses the key, a rejection for a key another request owns, and a record
the relay cannot carry through. In each, every record gets one outcome and offsets move on."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.models import payload_fingerprint
from tests.support.pipeline import SIM_API_KEY, Pipeline, Result

MODEL = "apimart-doubao-seedance-4-0"
TIMEOUT_S = 60.0


@pytest.fixture
def sim_args() -> list[str]:
    # Tasks run long enough to be caught in flight by a purge or a shutdown.
    return ["--queued-s", "0.2", "--processing-s", "4-6", "--failure-rate", "0"]


def _record(key: str, **extra: object) -> tuple[bytes, bytes]:
    body = {"model": MODEL, "input": {"prompt": f"prompt of {key}"}, **extra}
    return key.encode(), json.dumps(body).encode()


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _charges(pipeline: Pipeline) -> list[dict[str, Any]]:
    charges: list[dict[str, Any]] = (await pipeline.sim_get("/_sim/ledger"))["charges"]
    return charges


async def _committed_reaches(pipeline: Pipeline, partition: int, offset: int) -> None:
    async def reached() -> bool:
        return await pipeline.committed(partition) == offset

    await _until(f"partition {partition} committed at {offset}", reached, 20.0)


def _per_key(results: list[Result]) -> Counter[str]:
    return Counter(r.key for r in results)


async def test_a_task_mindvideo_forgets_ends_in_one_result_and_its_partition_moves_on(
    pipeline: Pipeline, unique: str
) -> None:
    u = unique[:8]
    lost, after = f"lost-{u}", [f"after-{u}-{i}" for i in range(2)]
    _, port = await pipeline.start_relay()
    await pipeline.produce([_record(lost), *(_record(k) for k in after)], partition=0)

    async def submitted() -> bool:
        return any(c["idempotency_key"] == lost for c in await _charges(pipeline))

    await _until("the task to be submitted", submitted, TIMEOUT_S)
    [task_id] = [c["task_id"] for c in await _charges(pipeline) if c["idempotency_key"] == lost]
    forgotten = await pipeline.sim_post("/_sim/forget", {"task_ids": [task_id]})
    assert forgotten == {"forgotten": [task_id]}

    results = await pipeline.results({lost, *after}, TIMEOUT_S)
    by_key = {r.key: r.value for r in results}
    assert by_key[lost]["type"] == "task.failed"
    assert by_key[lost]["error"]["code"] == "task_lost"
    assert by_key[lost]["task_id"] == task_id
    assert {by_key[k]["status"] for k in after} == {"succeeded"}
    await _committed_reaches(pipeline, 0, 3)
    await asyncio.sleep(1.0)  # a retried task would publish again by now
    again = await pipeline.results(set(), 2.0, min_count=10**9)
    assert _per_key(again) == dict.fromkeys([lost, *after], 1), "one result per key"
    assert Counter(c["idempotency_key"] for c in await _charges(pipeline))[lost] == 1
    assert await pipeline.metric(port, "relay_tasks_terminal_total", status="failed") == 1


async def test_sigterm_with_the_gate_closed_exits_at_once_and_the_next_relay_finishes_all(
    pipeline: Pipeline, unique: str
) -> None:
    u = unique[:8]
    early = [f"early-{u}-{i}" for i in range(5)]  # submitted, then the key is refused
    late = [f"late-{u}-{i}" for i in range(5)]  # never submitted by the first relay
    relay, port = await pipeline.start_relay(
        RELAY_SHUTDOWN_GRACE_S="60", RELAY_MINDVIDEO_PROBE_INTERVAL_S="0.5"
    )
    await pipeline.produce([_record(k) for k in early])

    async def early_submitted() -> bool:
        return len(await _charges(pipeline)) == len(early)

    await _until("the early requests to be submitted", early_submitted, TIMEOUT_S)
    await pipeline.sim_post("/_sim/keys", {"revoke": [SIM_API_KEY]})
    await pipeline.produce([_record(k) for k in late])

    async def gate_closed() -> bool:
        # Refused credentials leave the relay ready but degraded (a restart cannot fix a key).
        status, body = await pipeline.relay_get(port, "/readyz")
        return status == 200 and '"degraded"' in body and "401" in body

    await _until("the credentials gate to close", gate_closed, TIMEOUT_S)
    in_flight = await pipeline.metric(port, "relay_tasks_in_flight")
    assert in_flight >= 1, "work is parked behind the gate"

    started = time.monotonic()
    assert relay.stop(timeout_s=90.0) == 0, "SIGTERM exits cleanly"
    stopped_in_s = time.monotonic() - started
    print(f"\nSIGTERM with {int(in_flight)} requests parked: exited in {stopped_in_s:.1f}s")
    assert stopped_in_s < 15.0, "not the 60 s grace period: parked work is handed back at once"

    await pipeline.sim_post("/_sim/keys", {"restore": [SIM_API_KEY]})
    await pipeline.start_relay()
    keys = [*early, *late]
    await pipeline.results(set(keys), TIMEOUT_S)
    await asyncio.sleep(1.0)
    results = await pipeline.results(set(), 2.0, min_count=10**9)
    assert _per_key(results) == dict.fromkeys(keys, 1), "every parked request completes once"
    assert {r.value["status"] for r in results} == {"succeeded"}
    charges = Counter(c["idempotency_key"] for c in await _charges(pipeline))
    assert charges == dict.fromkeys(keys, 1), "one charge per key"


async def test_a_rejection_for_a_key_in_use_is_dead_lettered_not_published(
    pipeline: Pipeline, unique: str
) -> None:
    u = unique[:8]
    owned, free, marker = f"owned-{u}", f"free-{u}", f"marker-{u}"
    _, port = await pipeline.start_relay()
    await pipeline.produce([_record(owned)])

    async def submitted() -> bool:
        return len(await _charges(pipeline)) == 1

    await _until("the owner's task to be submitted", submitted, TIMEOUT_S)
    hostile = {"webhook_url": "https://attacker.example.com/hook"}
    await pipeline.produce(
        [
            _record(owned, input={"prompt": "x", "n": 99}, **hostile),  # while it runs
            (owned.encode(), b"{not json"),
        ]
    )
    first = await pipeline.results({owned}, TIMEOUT_S)
    assert [r.value["type"] for r in first] == ["task.succeeded"]
    await pipeline.produce(
        [_record(owned, colour="red", **hostile), _record(free, colour="red"), _record(marker)]
    )
    results = await pipeline.results({owned, free, marker}, TIMEOUT_S)
    assert _per_key(results) == {owned: 1, free: 1, marker: 1}, "no second result for the owner"
    assert next(r for r in results if r.key == free).value["error"]["code"] == "invalid_request"
    assert all(b"attacker" not in r.headers.get("webhook-url", b"") for r in results)

    dead = await pipeline.results(set(), 10.0, topic=pipeline.dlq_topic, min_count=3)
    assert sorted(
        (r.headers["error.reason"].decode(), r.headers["rejection.code"].decode()) for r in dead
    ) == [
        ("key_in_use", "invalid_input"),
        ("key_in_use", "invalid_request"),
        ("key_in_use", "not_json"),
    ]
    assert {r.key for r in dead} == {owned}
    assert (
        await pipeline.metric(port, "relay_records_dead_lettered_total", reason="key_in_use") == 3
    )
    assert [c["idempotency_key"] for c in await _charges(pipeline)] == [owned, marker]


async def test_a_record_the_relay_cannot_carry_through_is_dead_lettered_and_passed(
    pipeline: Pipeline, unique: str, redis_client: aioredis.Redis
) -> None:
    u = unique[:8]
    stuck, after = f"stuck-{u}", f"after-{u}"
    body = {"model": MODEL, "input": {"prompt": f"prompt of {stuck}"}, "metadata": {"o": "1"}}
    # An idempotency record this relay cannot read (e.g. written by a newer version).
    redis_key = f"{pipeline.redis_prefix}:idem:{{{stuck}}}"
    await redis_client.hset(
        redis_key, mapping={"fp": payload_fingerprint(MODEL, body["input"]), "state": "archived"}
    )
    _, port = await pipeline.start_relay(RELAY_RECORD_MAX_ATTEMPTS="3")
    await pipeline.produce(
        [(stuck.encode(), json.dumps(body).encode()), _record(after)], partition=0
    )

    dead = await pipeline.results(set(), TIMEOUT_S, topic=pipeline.dlq_topic, min_count=1)
    [letter] = dead
    assert letter.key == stuck
    assert letter.headers["error.reason"] == b"internal_error"
    assert letter.headers["error.class"] == b"ValueError"
    assert b"archived" in letter.headers["error.message"]
    assert letter.headers["original.value"] == b"re-encoded"
    assert json.loads(letter.value["raw"]) == body, "the payload is the request, not the error"
    assert [r.key for r in await pipeline.results({after}, TIMEOUT_S)] == [after]
    await _committed_reaches(pipeline, 0, 2)
    retried = await pipeline.metric(
        port, "relay_retries_total", scope="lifecycle", reason="internal"
    )
    assert retried == 2, "three tries in all"
    assert (
        await pipeline.metric(port, "relay_records_dead_lettered_total", reason="internal_error")
        == 1
    )
    assert [c["idempotency_key"] for c in await _charges(pipeline)] == [after]
    status, _ = await pipeline.relay_get(port, "/readyz")
    assert status == 200
    lines = pipeline.relays[0].log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    errors = [e["msg"] for e in entries if e["level"] == "error"]
    assert errors == ["unexpected error; the record is dead-lettered as internal_error"]
