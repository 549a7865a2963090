"""Webhooks under receiver faults: a failing, hanging receiver still gets every result exactly as
published although the relay is SIGKILLed during the backoff; a hanging endpoint does not slow
deliveries to a healthy one."""

from __future__ import annotations

import asyncio
import json

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import (
    metric,
    percentile,
    read_topic,
    request,
    verified,
    webhook_dlq,
    webhook_env,
)

TIMEOUT_S = 25.0


def _flaky(arrival: int) -> int | float:
    """500, then a hang past the relay's timeout, then 500 again, then 200."""
    return {1: 500, 2: -3.0, 3: 500}.get(arrival, 200)


async def test_outage_and_relay_crash_lose_nothing(
    tansu_pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    pipeline = tansu_pipeline  # Tansu expires the killed relay's group sessions
    receiver = Receiver(behaviour=_flaky)
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=receiver.url,
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,0.5,1,1,1,2",
        RELAY_WEBHOOK_TIMEOUT_S="1",
        RELAY_WEBHOOK_LEASE_S="2",
        # This test is about durable retries; breakers are exercised elsewhere (1000 attempts
        # before either breaker rule counts).
        RELAY_WEBHOOK_BREAKER_MIN_REQUESTS="1000",
    )
    try:
        relay, _ = await pipeline.start_relay(**env)
        keys = [f"outage-{unique[:8]}-{i}" for i in range(10)]
        await pipeline.produce([request(k) for k in keys])
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 10, TIMEOUT_S)
        assert sorted(r.key for r in results) == sorted(keys)
        event_ids = {json.loads(r.value)["event_id"] for r in results}

        assert await receiver.wait_for(lambda: set(receiver.by_id()) == event_ids, TIMEOUT_S)
        assert not receiver.answered(), "every first attempt failed"
        relay.kill()  # SIGKILL while the deliveries wait for their retries
        await asyncio.sleep(0.5)  # requests sent just before the kill may still be read here
        seen = len(receiver.deliveries)
        await asyncio.sleep(1.0)
        assert len(receiver.deliveries) == seen, "nothing is delivered while the relay is dead"
        # Retries resume as soon as the process is up, before it has rejoined any group.
        relay.start()

        assert await receiver.wait_for(lambda: set(receiver.answered()) == event_ids, TIMEOUT_S)
        answered = receiver.answered()
        for record in results:
            event_id = json.loads(record.value)["event_id"]
            assert answered[event_id].body == record.value, "exactly as published"
            arrivals = receiver.by_id()[event_id]
            assert 4 <= len(arrivals) <= 7, "500, timeout, 500, then 200 (a crash may add one)"
            for arrival in arrivals:
                assert arrival.body == record.value
                verified(arrival)
        assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == len(keys)
        assert await read_topic(pipeline.bootstrap, dlq, 1, 0.5) == [], "nothing dead-lettered"
    finally:
        await receiver.stop()


async def test_a_hanging_endpoint_does_not_slow_a_healthy_one(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    healthy, hanging = Receiver(), Receiver(behaviour=lambda _: -30.0)
    await healthy.start()
    await hanging.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=f"{healthy.url},{hanging.url}",
        RELAY_WEBHOOK_TIMEOUT_S="5",
        RELAY_WEBHOOK_LEASE_S="8",
        RELAY_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="4",
    )
    try:
        _, port = await pipeline.start_relay(**env)
        alone = [f"alone-{unique[:8]}-{i}" for i in range(10)]
        await pipeline.produce([request(k, healthy.url) for k in alone])
        assert await healthy.wait_for(lambda: len(healthy.answered()) == 10, TIMEOUT_S)
        both = [f"both-{unique[:8]}-{i}" for i in range(10)]
        await pipeline.produce([request(k) for k in both])
        assert await healthy.wait_for(lambda: len(healthy.answered()) == 20, TIMEOUT_S)
        assert len(hanging.deliveries) <= 4, "at most 4 at once to one endpoint"

        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 20, TIMEOUT_S)
        answered = healthy.answered()
        latency = {
            r.key: answered[json.loads(r.value)["event_id"]].received_at - r.timestamp_ms / 1000
            for r in results
        }
        before = [latency[k] for k in alone]
        during = [latency[k] for k in both]
        print(
            f"\nhealthy endpoint latency alone: p50={percentile(before, 0.5) * 1000:.0f}ms "
            f"max={max(before) * 1000:.0f}ms; beside a hanging one: "
            f"p50={percentile(during, 0.5) * 1000:.0f}ms max={max(during) * 1000:.0f}ms"
        )
        assert max(during) < 2.0
        assert percentile(during, 0.5) < percentile(before, 0.5) + 0.5

        for _ in range(100):
            if await metric(port, "relay_webhook_attempts_total", outcome="timeout") >= 1:
                break
            await asyncio.sleep(0.1)
        assert await metric(port, "relay_webhook_attempts_total", outcome="timeout") >= 1
        assert not hanging.answered()
    finally:
        await healthy.stop()
        await hanging.stop()


async def test_many_hanging_origins_leave_proven_origins_their_slots(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    """A producer names many distinct origins that never answer: together they hold at most
    RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT delivery tasks, and a proven origin is not held up."""
    healthy = Receiver()
    hanging = [Receiver(behaviour=lambda _: -60.0) for _ in range(6)]
    for receiver in (healthy, *hanging):
        await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_MAX_IN_FLIGHT="4",
        RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT="2",
        RELAY_WEBHOOK_TIMEOUT_S="30",
        RELAY_WEBHOOK_LEASE_S="40",
    )
    u = unique[:8]
    try:
        _, port = await pipeline.start_relay(**env)
        await pipeline.produce([request(f"first-{u}", healthy.url)])
        assert await healthy.wait_for(lambda: len(healthy.answered()) == 1, TIMEOUT_S)
        await pipeline.produce([request(f"hang-{u}-{i}", h.url) for i, h in enumerate(hanging)])

        def hung() -> int:
            return sum(len(h.deliveries) for h in hanging)

        assert await healthy.wait_for(lambda: hung() == 2, TIMEOUT_S)
        later = [request(f"later-{u}-{i}", healthy.url) for i in range(6)]
        await pipeline.produce(later)
        # Without the cap the four delivery tasks would all hang for the 30 s timeout.
        assert await healthy.wait_for(lambda: len(healthy.answered()) == 7, TIMEOUT_S)
        assert hung() == 2, "the other hanging origins were deferred, not attempted"
        assert await metric(port, "relay_webhook_unproven_deferred_total") >= 1
        assert await metric(port, "relay_webhook_attempts_total", outcome="timeout") == 0
    finally:
        for receiver in (healthy, *hanging):
            await receiver.stop()
