"""The dispatcher against fakes of our own components (no service): every row of the lifecycle
table as a user meets it: one result per key, a charge only where one is due, nothing stuck."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.exceptions import FollowTimeout, OperatorError, RequestRejected, RetryableError
from relay.models import payload_fingerprint
from relay.pipeline.idempotency import KeyState
from tests.pipeline.fakes import MODEL, Harness, request, source


def _types(h: Harness) -> list[tuple[str, str | None]]:
    return [(r.type, r.error.code if r.error else None) for r, _ in h.publisher.results]


async def test_a_valid_request_is_submitted_followed_published_and_marked() -> None:
    h = Harness()
    record = source("k1", request("k1", webhook_url="https://hooks.example.com/a"))
    await h.processor.process(record)
    assert _types(h) == [("task.succeeded", None)]
    assert h.publisher.results[0][1] == "https://hooks.example.com/a"
    assert h.client.submits == ["k1"]
    assert h.store.record("k1").state == KeyState.PUBLISHED
    assert h.store.hashes["k1"]["last_event_id"] == "3"
    assert h.metric("relay_tasks_submitted_total", model=MODEL) == 1
    assert h.metric("relay_tasks_terminal_total", model=MODEL, status="succeeded") == 1

    await h.processor.process(source("k1", request("k1")))  # a replay
    assert len(h.publisher.results) == 1, "nothing published again"
    assert h.client.submits == ["k1"], "nothing submitted again"
    assert h.metric("relay_dedupe_hits_total", outcome="published") == 1


async def test_the_record_bytes_are_dropped_once_decoded() -> None:
    h = Harness()
    record = source("k1", request("k1"))
    seen: list[bytes | None] = []

    async def look() -> None:
        seen.append(record.value)

    h.follower.before = look
    await h.processor.process(record)
    assert seen == [None], "while the task is followed no copy of the record is kept"


async def test_outages_hold_the_request_and_are_counted() -> None:
    h = Harness(max_attempts=2)
    h.client.errors["submit"] += [RetryableError("503", reason="http_5xx")] * 5
    h.store.errors["claim"].append(RedisConnectionError("redis down"))
    h.publisher.errors["publish"].append(KafkaConnectionError())
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("task.succeeded", None)], "outages are waited out, never rejected"
    assert h.client.submits == ["k1"] * 6
    retried = {
        reason: h.metric("relay_retries_total", scope="lifecycle", reason=reason)
        for reason in ("mindvideo_http_5xx", "redis", "kafka", "internal")
    }
    assert retried == {"mindvideo_http_5xx": 5, "redis": 1, "kafka": 1, "internal": 0}
    assert h.publisher.dead_letters == []


async def test_refused_credentials_close_the_gate_and_nothing_is_rejected() -> None:
    h = Harness()
    h.client.errors["submit"].append(OperatorError(401, "invalid api key"))
    task = asyncio.create_task(h.processor.process(source("k1", request("k1"))))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not h.gate.is_open
    assert h.gate.reason is not None
    assert "401" in h.gate.reason
    assert not task.done()
    assert h.publisher.results == []
    h.gate.reopen()
    await asyncio.wait_for(task, 5.0)
    assert _types(h) == [("task.succeeded", None)]


async def test_a_final_4xx_at_submit_is_a_rejection_and_frees_the_key() -> None:
    h = Harness()
    h.client.errors["submit"].append(RequestRejected("content_policy", "not allowed"))
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("request.rejected", "content_policy")]
    assert h.store.record("k1").state == KeyState.REJECTED
    corrected = request("k1", input={"prompt": "something allowed"})
    await h.processor.process(source("k1", corrected))
    assert _types(h)[-1] == ("task.succeeded", None), "a corrected request may reuse the key"


async def test_a_task_mindvideo_forgets_ends_in_one_failed_result() -> None:
    h = Harness()
    h.follower.errors["follow"].append(RequestRejected("task_not_found", "no task 'task_1'"))
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("task.failed", "task_lost")]
    result = h.publisher.results[0][0]
    assert result.task_id == "task_1"
    assert result.cost_estimate == 0.0252
    assert result.error is not None
    assert "task_not_found" in result.error.message
    assert h.store.record("k1").state == KeyState.PUBLISHED
    assert len(h.follower.calls) == 1, "not followed again"

    await h.processor.process(source("k1", request("k1")))
    assert len(h.publisher.results) == 1, "a replay publishes nothing more"


async def test_a_task_that_never_ends_fails_with_the_timeout_code() -> None:
    h = Harness()
    h.follower.errors["follow"].append(FollowTimeout("not terminal within 3600s"))
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("task.failed", "relay_follow_timeout")]


async def test_the_task_timeout_counts_from_the_submit() -> None:
    submitted = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    now = submitted.timestamp() + 2400.0  # 40 minutes later, e.g. after a restart
    h = Harness(task_timeout_s=3600.0, wall_clock=lambda: now)
    body = request("k1")
    h.store.hashes["k1"] = {
        "fp": payload_fingerprint(MODEL, body["input"]),
        "state": KeyState.SUBMITTED,
        "task_id": "task_9",
        "submitted_at": "2026-11-25T19:00:00.000Z",
        "last_event_id": "2",
    }
    await h.processor.process(source("k1", body))
    assert h.client.submits == [], "resumed, not submitted again"
    call = h.follower.calls[0]
    assert (call.task_id, call.last_event_id) == ("task_9", "2")
    assert call.timeout_s == pytest.approx(1200.0), "20 minutes left of the hour, not a new hour"


async def test_an_unexpected_error_is_retried_then_dead_lettered_as_internal_error() -> None:
    h = Harness(max_attempts=3)
    h.store.errors["claim"] += [ValueError("corrupt idempotency record")] * 3
    body = request("k1", metadata={"order": "1"})
    await h.processor.process(source("k1", body, offset=7))
    assert h.publisher.results == [], "no result: the record could not be carried through"
    [dead] = h.publisher.dead_letters
    assert dead.reason == "internal_error"
    assert dead.headers == {"error.class": "ValueError", "original.value": "re-encoded"}
    assert dead.message == "corrupt idempotency record"
    assert dead.key == b"k1"
    assert json.loads(dead.value or b"") == body, "the decoded request stands for its bytes"
    assert h.metric("relay_retries_total", scope="lifecycle", reason="internal") == 2
    assert h.metric("relay_records_dead_lettered_total", reason="internal_error") == 1
    assert h.client.submits == [], "nothing charged"


async def test_an_unexpected_error_that_goes_away_costs_one_retry() -> None:
    h = Harness(max_attempts=3)
    h.follower.errors["follow"].append(RuntimeError("a bug that passes"))
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("task.succeeded", None)]
    assert h.publisher.dead_letters == []
    assert len(h.follower.calls) == 2


async def test_a_dead_letter_written_during_a_kafka_outage_waits_for_kafka() -> None:
    h = Harness(max_attempts=1)
    h.store.errors["claim"].append(KeyError("state"))
    h.publisher.errors["dead_letter"] += [KafkaConnectionError(), KafkaConnectionError()]
    await h.processor.process(source("k1", request("k1")))
    assert [d.reason for d in h.publisher.dead_letters] == ["internal_error"]
    assert h.metric("relay_retries_total", scope="lifecycle", reason="kafka") == 2


async def test_a_dead_letter_that_cannot_be_written_does_not_hold_the_partition() -> None:
    h = Harness(max_attempts=1)
    h.store.errors["claim"].append(KeyError("state"))
    h.publisher.errors["dead_letter"].append(TypeError("headers"))
    await asyncio.wait_for(h.processor.process(source("k1", request("k1"))), 5.0)
    assert h.publisher.dead_letters == []
    assert h.publisher.results == []


async def test_an_undecodable_record_is_dead_lettered_with_its_original_bytes() -> None:
    h = Harness()
    await h.processor.process(source("k1", b"\xff not utf-8"))
    await h.processor.process(source(None, b"[1, 2]"))
    assert [(d.reason, d.value) for d in h.publisher.dead_letters] == [
        ("not_utf8", b"\xff not utf-8"),
        ("not_object", b"[1, 2]"),
    ]
    assert _types(h) == [("request.rejected", "not_utf8")], "keyed: rejected as well"


async def test_a_record_level_rejection_is_published_once_per_key_and_reason() -> None:
    h = Harness()
    bad = request("k1", colour="red")
    await h.processor.process(source("k1", bad))
    await h.processor.process(source("k1", bad))
    assert _types(h) == [("request.rejected", "invalid_request")]
    assert h.metric("relay_dedupe_hits_total", outcome="rejected") == 1
    await h.processor.process(source("k1", request("k1")))
    assert _types(h)[-1] == ("task.succeeded", None), "the key was never in use"


@pytest.mark.parametrize(
    ("state", "value", "code"),
    [
        (KeyState.PUBLISHED, request("k1", colour="red"), "invalid_request"),
        (KeyState.SUBMITTED, request("k1", input={"prompt": "x", "n": 99}), "invalid_input"),
        (KeyState.CLAIMED, b"{not json", "not_json"),
        (KeyState.TERMINAL, request("k1", idempotency_key="k2"), "idempotency_key_mismatch"),
    ],
)
async def test_a_key_in_use_gets_no_record_level_rejection(
    state: KeyState, value: bytes | dict[str, object], code: str
) -> None:
    h = Harness()
    h.store.hashes["k1"] = {"fp": "another tenant's payload", "state": state}
    await h.processor.process(source("k1", value))
    assert h.publisher.results == [], "no second, contradictory terminal result"
    [dead] = h.publisher.dead_letters
    assert (dead.reason, dead.headers) == ("key_in_use", {"rejection.code": code})
    assert dead.value == (value if isinstance(value, bytes) else json.dumps(value).encode())
    assert h.store.hashes["k1"]["state"] == state, "the owner's state is untouched"


async def test_a_conflicting_payload_is_rejected_once() -> None:
    h = Harness()
    await h.processor.process(source("k1", request("k1")))
    other = request("k1", input={"prompt": "another prompt"})
    await h.processor.process(source("k1", other))
    await h.processor.process(source("k1", other))
    third = request("k1", input={"prompt": "yet another prompt"})
    await h.processor.process(source("k1", third))
    assert _types(h) == [("task.succeeded", None), ("request.rejected", "idempotency_conflict")]
    assert h.client.submits == ["k1"]
    # Later conflicts, whatever their payload, go to the dead-letter topic: no flood of results
    # (and webhooks) under the owner's key.
    assert [d.reason for d in h.publisher.dead_letters] == ["idempotency_conflict"] * 2
    assert json.loads(h.publisher.dead_letters[-1].value or b"")["input"] == third["input"]


async def test_work_parked_at_the_closed_gate_is_handed_back_at_once() -> None:
    h = Harness()
    h.gate.close(OperatorError(402, "out of credit"))
    task = asyncio.create_task(h.processor.process(source("k1", request("k1"))))
    for _ in range(20):
        await asyncio.sleep(0)
    assert h.store.record("k1").state == KeyState.CLAIMED
    assert h.handover.hand_back_parked() == 1
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert h.client.submits == []
    assert h.publisher.results == []
    # Work that reaches the gate after the hand-back is not parked either.
    late = asyncio.create_task(h.processor.process(source("k2", request("k2"))))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(late, 1.0)
