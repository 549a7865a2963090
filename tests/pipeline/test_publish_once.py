"""A key's result is published once, by whoever wins the compare-and-set in Redis, with the
first claim's ``metadata`` and ``webhook_url`` (issue 17, an attack: a record with the same key
and payload from another producer, on another partition or a zombie after a rebalance, resumed
the task, published a second time and redirected the result to its own webhook). The real
lifecycle runs over a real Redis; MindVideo and Kafka are the lifecycle tests' fakes."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import redis.asyncio as aioredis

from relay.pipeline import steps
from relay.pipeline.idempotency import IdempotencyStore, KeyState
from tests.pipeline.fakes import FakeStore, Harness, request, source

OWNER_URL = "https://owner.example/hook"
OTHER_URL = "https://attacker.example/hook"


class _RealSleep(Harness):
    """Backs off for real (briefly): the waits below are on a lease in Redis."""

    async def _sleep(self, delay_s: float) -> None:
        await super()._sleep(delay_s)
        await asyncio.sleep(min(delay_s, 0.1))


def _two_owners(
    redis_client: aioredis.Redis, unique: str
) -> tuple[Harness, Harness, IdempotencyStore]:
    store = IdempotencyStore(redis_client, prefix=unique, retention_s=600)
    # The harness's steps take any IdempotencyStore; the fake's type is only its default.
    a, b = _RealSleep(store=cast(FakeStore, store)), _RealSleep(store=cast(FakeStore, store))
    b.client.tasks = a.client.tasks  # one MindVideo: the same key is the same task
    return a, b, store


async def test_a_second_record_of_the_key_neither_publishes_again_nor_redirects(
    redis_client: aioredis.Redis, unique: str
) -> None:
    owner, other, store = _two_owners(redis_client, unique)
    key = f"order-{unique[:8]}"
    release = asyncio.Event()

    async def held() -> None:
        await release.wait()

    owner.follower.before = held
    owned = request(key, webhook_url=OWNER_URL, metadata={"tenant": "owner"})
    first = asyncio.create_task(owner.processor.process(source(key, owned)))
    for _ in range(200):
        record = await store.get(key)
        if record is not None and record.state == KeyState.SUBMITTED:
            break
        await asyncio.sleep(0.02)
    # Same key and payload from someone else: it resumes the owner's task...
    copy = request(key, webhook_url=OTHER_URL, metadata={"tenant": "attacker"})
    await other.processor.process(source(key, copy, offset=7))
    release.set()
    await first

    published = owner.publisher.results + other.publisher.results
    assert len(published) == 1, "one result for the key, whoever followed the task"
    result, webhook_url = published[0]
    assert webhook_url == OWNER_URL
    assert result.metadata == {"tenant": "owner"}
    assert owner.client.submits + other.client.submits == [key]
    record = await store.get(key)
    assert record is not None
    assert record.state == KeyState.PUBLISHED


async def test_a_winner_that_dies_before_publishing_is_taken_over_after_its_lease(
    redis_client: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps, "PUBLISH_LEASE_S", 1)
    owner, successor, store = _two_owners(redis_client, unique)
    key = f"order-{unique[:8]}"
    record = request(key, webhook_url=OWNER_URL)

    async def die_at_publish() -> None:
        raise asyncio.CancelledError  # the process is gone after winning the publish

    # The owner wins the key's publish, then dies before the result reaches Kafka.
    owner.publisher.before = die_at_publish
    with pytest.raises(asyncio.CancelledError):
        await owner.processor.process(source(key, record))
    assert owner.publisher.results == []
    stored = await store.get(key)
    assert stored is not None
    assert stored.state == KeyState.TERMINAL

    # The record is read again (its offset was never committed): the successor waits out the
    # lease, then publishes the stored result; nothing is submitted again.
    await successor.processor.process(source(key, record))
    assert [r.type for r, _ in successor.publisher.results] == ["task.succeeded"]
    assert successor.publisher.results[0][1] == OWNER_URL
    assert successor.client.submits == []
    assert successor.metric("relay_retries_total", scope="lifecycle", reason="redis") >= 1
