"""Each distinct result of a key has its own ``event_id`` (and so its own webhook-id), a replay
keeps it; a tombstone stays whole through a Redis restart; a key's idempotency_conflict is
published by one process only (an outside attack on issue 17's state: V1, V4, V2). The real
lifecycle runs over a real Redis; MindVideo and Kafka are the lifecycle tests' fakes."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.exceptions import RequestRejected
from relay.models import ResultRecord, payload_fingerprint
from relay.pipeline import steps
from relay.pipeline.idempotency import IdempotencyStore, KeyState
from tests.pipeline.fakes import MODEL, FakeStore, Harness, request, source

EXPIRED = "2020-01-01T00:00:00Z"


class _RealSleep(Harness):
    """Backs off for real (briefly): some waits below are on a lease in Redis."""

    async def _sleep(self, delay_s: float) -> None:
        await super()._sleep(delay_s)
        await asyncio.sleep(min(delay_s, 0.1))


def _on(store: IdempotencyStore) -> Harness:
    # The harness's steps take any IdempotencyStore; the fake's type is only its default.
    return _RealSleep(store=cast(FakeStore, store))


def _rejections(h: Harness) -> list[ResultRecord]:
    return [r for r, _ in h.publisher.results if r.type == "request.rejected"]


async def test_every_distinct_rejection_of_a_key_has_its_own_event_id(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    h = _on(store)
    key = f"order-{unique[:8]}"
    await h.processor.process(source(key, request(key, input={"prompt": "x", "n": 99})))
    h.client.errors["submit"].append(RequestRejected("model_not_found", "no such model"))
    await h.processor.process(source(key, request(key, input={"prompt": "corrected"})))
    expired = request(key, input={"prompt": "again"}, expires_at=EXPIRED)
    await h.processor.process(source(key, expired))
    await h.processor.process(source(key, expired))  # a replay: deduplicated, same result

    codes = [(r.error.code if r.error else None) for r in _rejections(h)]
    assert codes == ["invalid_input", "model_not_found", "expired"]
    ids = [r.event_id for r in _rejections(h)]
    assert len(set(ids)) == 3, "a receiver deduplicating by webhook-id gets every outcome"
    record = await store.get(key)
    assert record is not None
    assert record.state == KeyState.REJECTED
    assert record.event_id(key) == ids[-1], "the tombstone names the result it stands for"


async def test_a_conflict_and_the_owners_rejection_have_different_event_ids(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    owner, other = _on(store), _on(store)
    key = f"order-{unique[:8]}"
    owned = request(key)
    fp = payload_fingerprint(MODEL, owned["input"])
    assert (await store.claim(key, fp, MODEL, "t")).outcome == "new"  # the owner's claim
    await other.processor.process(source(key, request(key, input={"prompt": "conflicting"})))
    # The owner's request (a crash after its claim: read again) is then refused by MindVideo.
    owner.client.errors["submit"].append(RequestRejected("content_policy", "not allowed"))
    await owner.processor.process(source(key, owned))
    [conflict] = _rejections(other)
    [refused] = _rejections(owner)
    assert conflict.error is not None
    assert conflict.error.code == "idempotency_conflict"
    assert conflict.event_id != refused.event_id


async def test_a_mark_lost_to_a_redis_restart_still_leaves_a_whole_tombstone(
    redis_client: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    h = _on(store)
    key = f"order-{unique[:8]}"
    mark = store.mark_published
    lost: list[int] = []

    async def restart_then_mark(*args: object) -> None:
        if not lost:  # Redis goes away (and comes back empty) just as the mark is sent
            lost.append(await redis_client.delete(store.key(key)))
            raise RedisConnectionError("Connection refused")
        await mark(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "mark_published", restart_then_mark)
    await h.processor.process(source(key, request(key)))
    assert lost == [1]
    fields = await redis_client.hgetall(store.key(key))
    assert b"fp" in fields, "the tombstone has the fingerprint although the record was gone"
    await h.processor.process(source(key, request(key)))  # a replay
    assert h.client.submits == [key], "not submitted again"
    assert [r.type for r, _ in h.publisher.results] == ["task.succeeded"], "nor published"


async def test_a_record_without_its_fingerprint_is_not_claimed_afresh(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    fp = payload_fingerprint(MODEL, {"prompt": "a"})
    await redis_client.hset(store.key("k1"), mapping={"s": "ps", "t": "task_1"})
    await redis_client.hset(store.key("k2"), mapping={"state": "submitted", "task_id": "t"})
    for key in ("k1", "k2"):
        claim = await store.claim(key, fp, MODEL, "t")
        assert claim.outcome == "existing", key
    await redis_client.hset(store.key("k3"), mapping={"last_event_id": "7"})
    assert (await store.claim("k3", fp, MODEL, "t")).outcome == "new", "no state: nothing owns it"


async def test_concurrent_conflicts_publish_one_result_and_dead_letter_the_rest(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    relays = [_on(store) for _ in range(4)]
    key = f"order-{unique[:8]}"
    assert (await store.claim(key, "f" * 64, MODEL, "t")).outcome == "new"
    await asyncio.gather(
        *(
            h.processor.process(source(key, request(key, input={"prompt": f"p{i}"}), offset=i))
            for i, h in enumerate(relays)
        )
    )
    results = [r for h in relays for r in _rejections(h)]
    dead = [d.reason for h in relays for d in h.publisher.dead_letters]
    assert len(results) == 1, "one idempotency_conflict result per key, across processes"
    assert dead == ["idempotency_conflict"] * 3, "every other record ends in a dead letter"


async def test_a_conflict_winner_that_dies_leaves_the_result_to_the_next_record(
    redis_client: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps, "PUBLISH_LEASE_S", 1)
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    dying, next_one = _on(store), _on(store)
    key = f"order-{unique[:8]}"
    assert (await store.claim(key, "f" * 64, MODEL, "t")).outcome == "new"

    async def die_at_publish() -> None:
        raise asyncio.CancelledError  # the process is gone after taking the conflict

    dying.publisher.before = die_at_publish
    with pytest.raises(asyncio.CancelledError):
        await dying.processor.process(source(key, request(key, input={"prompt": "b"})))
    await asyncio.sleep(1.1)  # its lease runs out
    await next_one.processor.process(source(key, request(key, input={"prompt": "c"})))
    [conflict] = _rejections(next_one)
    assert conflict.error is not None
    assert conflict.error.code == "idempotency_conflict"
    await next_one.processor.process(source(key, request(key, input={"prompt": "d"})))
    assert len(_rejections(next_one)) == 1
    assert [d.reason for d in next_one.publisher.dead_letters] == ["idempotency_conflict"]


async def test_the_same_rejected_request_on_two_relays_at_once_is_published_once(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    relays = [_on(store) for _ in range(3)]
    key = f"order-{unique[:8]}"
    late = request(key, expires_at=EXPIRED)  # the same key and payload on three partitions
    await asyncio.gather(
        *(h.processor.process(source(key, late, offset=i)) for i, h in enumerate(relays))
    )
    results = [r for h in relays for r in _rejections(h)]
    assert [r.error.code if r.error else None for r in results] == ["expired"]
    record = await store.get(key)
    assert record is not None
    assert record.state == KeyState.REJECTED
    corrected = request(key, input={"prompt": "corrected"})
    await relays[0].processor.process(source(key, corrected))
    assert relays[0].publisher.results[-1][0].type == "task.succeeded", "the key is free again"


async def test_a_rejection_whose_publisher_died_is_published_later_and_frees_the_key(
    redis_client: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps, "PUBLISH_LEASE_S", 1)
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    dying, successor = _on(store), _on(store)
    key = f"order-{unique[:8]}"
    late = request(key, expires_at=EXPIRED)

    async def die_at_publish() -> None:
        raise asyncio.CancelledError  # gone after storing the rejection and taking its publish

    dying.publisher.before = die_at_publish
    with pytest.raises(asyncio.CancelledError):
        await dying.processor.process(source(key, late))
    await successor.processor.process(source(key, late))  # read again: waits out the lease
    [refused] = _rejections(successor)
    assert refused.error is not None
    assert refused.error.code == "expired"
    record = await store.get(key)
    assert record is not None
    assert record.state == KeyState.REJECTED, "still a rejection: a corrected request may reuse"
    await successor.processor.process(source(key, request(key, input={"prompt": "corrected"})))
    assert successor.publisher.results[-1][0].type == "task.succeeded"


async def test_the_conflict_lease_is_left_out_of_the_tombstone(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    h = _on(store)
    key = f"order-{unique[:8]}"
    owned = request(key)
    assert (await store.claim(key, payload_fingerprint(MODEL, owned["input"]), MODEL, "t")).outcome
    await h.processor.process(source(key, request(key, input={"prompt": "conflicting"})))
    await h.processor.process(source(key, owned))  # the owner's request ends: a tombstone
    raw = await redis_client.hgetall(store.key(key))
    fields = [name.encode() if isinstance(name, str) else name for name in raw]
    assert b"seen:conflict" in fields, "the conflict stays published once"
    assert not [f for f in fields if f.startswith(b"lease:")], "no lease kept for a week"
