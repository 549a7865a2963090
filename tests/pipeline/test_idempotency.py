"""The idempotency store on a real Redis: claims are atomic, states move forward, records expire."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from relay.models import ResultRecord, event_id_for, payload_fingerprint, rejection
from relay.pipeline.idempotency import IdempotencyStore

MODEL = "apimart-doubao-seedance-4-0"
FP = payload_fingerprint(MODEL, {"prompt": "a"})
OTHER_FP = payload_fingerprint(MODEL, {"prompt": "b"})


def _store(redis_client: aioredis.Redis, unique: str, retention_s: int = 3600) -> IdempotencyStore:
    return IdempotencyStore(redis_client, prefix=unique, retention_s=retention_s)


async def test_claim_new_conflict_existing(redis_client: aioredis.Redis, unique: str) -> None:
    store = _store(redis_client, unique)
    assert (await store.claim("k1", FP, MODEL, "t0")).outcome == "new"
    assert (await store.claim("k1", OTHER_FP, MODEL, "t1")).outcome == "conflict"
    again = await store.claim("k1", FP, MODEL, "t2")
    assert again.outcome == "existing"
    assert again.record is not None
    assert again.record.state == "claimed"

    await store.mark_submitted(
        "k1", task_id="task_1", request_id="req_1", cost_estimate=0.0252, submitted_at="t3"
    )
    await store.mark_event("k1", "3")
    record = (await store.claim("k1", FP, MODEL, "t4")).record
    assert record is not None
    assert (record.state, record.task_id, record.request_id) == ("submitted", "task_1", "req_1")
    assert (record.last_event_id, record.cost_estimate) == ("3", 0.0252)


async def test_concurrent_claims_have_one_winner(redis_client: aioredis.Redis, unique: str) -> None:
    store = _store(redis_client, unique)
    outcomes = await asyncio.gather(*(store.claim("race", FP, MODEL, "t") for _ in range(50)))
    assert sorted(c.outcome for c in outcomes).count("new") == 1


async def test_a_rejected_key_may_be_reused_with_a_corrected_payload(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique)
    assert (await store.claim("k2", FP, MODEL, "t0")).outcome == "new"
    await store.mark_rejected("k2", rejection("k2", "invalid_input", "bad"))
    same = await store.claim("k2", FP, MODEL, "t1")
    assert same.outcome == "existing", "the same payload is a duplicate of the rejection"
    assert (await store.claim("k2", OTHER_FP, MODEL, "t2")).outcome == "new"


async def test_keys_use_a_cluster_hash_tag_and_expire(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique, retention_s=120)
    assert store.key("order-1") == f"{unique}:idem:{{order-1}}"
    await store.claim("order-1", FP, MODEL, "t0")
    assert 0 < await redis_client.ttl(store.key("order-1")) <= 120
    await store.mark_published("order-1", rejection("order-1", "invalid_input", "x"))
    record = await store.get("order-1")
    assert record is not None
    assert record.state == "published"
    assert 0 < await redis_client.ttl(store.key("order-1")) <= 120


async def test_first_time_markers_expire_with_the_record(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique, retention_s=90)
    assert await store.first_time("k3", "rejected:abc")
    assert not await store.first_time("k3", "rejected:abc")
    assert await store.first_time("k3", "conflict:def")
    assert 0 < await redis_client.ttl(store.key("k3")) <= 90
    assert (await store.claim("k3", FP, MODEL, "t0")).outcome == "new", "the key is still free"


async def test_a_published_record_shrinks_to_a_small_listpack_tombstone(
    redis_client: aioredis.Redis, unique: str
) -> None:
    """Once published, the record keeps what dedupe and replay need, in Redis's compact
    encoding; a duplicate is still a duplicate and a different payload still a conflict."""
    store = _store(redis_client, unique)
    key = "order-tomb-8812-cover"
    assert (await store.claim(key, FP, MODEL, "2026-11-30T16:00:00.000Z")).outcome == "new"
    await store.mark_submitted(
        key,
        task_id="task_0123456789abcdef01234567",
        request_id="req_1",
        cost_estimate=0.0252,
        submitted_at="2026-11-30T16:00:01.000Z",
    )
    result = ResultRecord.model_validate(
        {
            "event_id": event_id_for(key, "task.succeeded"),
            "type": "task.succeeded",
            "idempotency_key": key,
            "model": MODEL,
            "task_id": "task_0123456789abcdef01234567",
            "status": "succeeded",
            "output": {"video_url": "https://cdn.example/" + "v" * 400},
            "submitted_at": "2026-11-30T16:00:01.000Z",
            "completed_at": "2026-11-30T16:01:00.000Z",
            "metadata": {"order": "8812", "note": "n" * 300},
        }
    )
    turn = await store.take_publish(key, result.to_json_bytes(), "token", 60)
    assert turn.outcome == "won"
    assert (await store.get(key)).state == "terminal"  # type: ignore[union-attr]
    assert (await store.take_publish(key, b"{}", "another", 60)).outcome == "busy"
    assert await store.first_time(key, "rejected:abc")
    await store.mark_published(key, result)

    assert await redis_client.object("encoding", store.key(key)) in (b"listpack", "listpack")
    usage = await redis_client.memory_usage(store.key(key), samples=0)
    assert usage is not None
    assert usage < 300, usage  # 1,552 before the shrink (issue 17)
    record = await store.get(key)
    assert record is not None
    assert (record.state, record.task_id) == ("published", "task_0123456789abcdef01234567")
    assert record.published_at is not None
    assert record.event_id(key) == result.event_id
    assert await store.seen(key, "rejected:abc"), "once-markers outlive the shrink"
    assert 0 < await redis_client.ttl(store.key(key)) <= 3600

    again = await store.claim(key, FP, MODEL, "t")
    assert again.outcome == "existing"
    assert again.record is not None
    assert again.record.state == "published"
    assert (await store.claim(key, OTHER_FP, MODEL, "t")).outcome == "conflict"
    assert await store.refusal_status(key, "rejected:other") == "in_use"


async def test_a_rejected_tombstone_still_frees_the_key_for_a_corrected_payload(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique)
    assert (await store.claim("k5", FP, MODEL, "t0")).outcome == "new"
    await store.mark_rejected("k5", rejection("k5", "invalid_input", "bad"))
    assert await store.refusal_status("k5", "rejected:x") == "new"
    assert (await store.claim("k5", FP, MODEL, "t1")).outcome == "existing"
    assert (await store.claim("k5", OTHER_FP, MODEL, "t2")).outcome == "new"
