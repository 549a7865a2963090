"""The webhook fast path on real processes: a relay running both roles delivers the webhooks of
the results it publishes itself, at once, each once; the results-topic intake schedules them
when the pipeline and the dispatcher run in separate processes (RELAY_ROLE), and after a crash
between publishing and scheduling."""

from __future__ import annotations

import asyncio
import json

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import metric, read_topic, request, verified, webhook_dlq, webhook_env

TIMEOUT_S = 20.0
COUNT = 12


async def _check_delivered_once(
    pipeline: Pipeline, receiver: Receiver, keys: list[str]
) -> list[float]:
    """Every result of ``keys`` reached ``receiver`` exactly once, byte for byte as published;
    the latencies from publish to arrival (s)."""
    results = await read_topic(pipeline.bootstrap, pipeline.results_topic, len(keys), TIMEOUT_S)
    assert sorted(r.key for r in results) == sorted(keys)
    assert await receiver.wait_for(lambda: len(receiver.by_id()) == len(keys), TIMEOUT_S)
    await asyncio.sleep(0.5)  # anything extra would arrive now
    latencies = []
    for record in results:
        value = json.loads(record.value)
        arrived = receiver.by_id()[value["event_id"]]
        assert len(arrived) == 1, f"{record.key}: {len(arrived)} deliveries"
        assert arrived[0].body == record.value
        assert verified(arrived[0]) == value
        latencies.append(arrived[0].received_at - record.timestamp_ms / 1000)
    return latencies


async def test_the_publishing_process_delivers_its_own_results(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    try:
        # A poll interval far longer than the test: only the fast path can deliver in time.
        _, port = await pipeline.start_relay(
            **webhook_env(
                dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url, RELAY_WEBHOOK_POLL_INTERVAL_S="60"
            )
        )
        keys = [f"direct-{unique[:8]}-{i}" for i in range(COUNT)]
        await pipeline.produce([request(k) for k in keys])
        latencies = await _check_delivered_once(pipeline, receiver, keys)
        assert await metric(port, "relay_webhook_scheduled_total", path="publish") == COUNT
        assert await metric(port, "relay_webhook_scheduled_total", path="intake") == 0
        assert await metric(port, "relay_webhook_deliveries_total", outcome="delivered") == COUNT
        print(f"\nfast path: max {max(latencies) * 1000:.0f} ms from publish to the receiver")
    finally:
        await receiver.stop()


async def test_split_roles_deliver_through_the_intake(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    try:
        env = webhook_env(dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url)
        _, requests_port = await pipeline.start_relay(**env, RELAY_ROLE="requests")
        _, webhooks_port = await pipeline.start_relay(**env, RELAY_ROLE="webhooks")
        keys = [f"split-{unique[:8]}-{i}" for i in range(COUNT)]
        await pipeline.produce([request(k) for k in keys])
        await _check_delivered_once(pipeline, receiver, keys)
        assert await metric(webhooks_port, "relay_webhook_scheduled_total", path="intake") == COUNT
        assert await metric(webhooks_port, "relay_webhook_scheduled_total", path="publish") == 0
        assert await metric(requests_port, "relay_webhook_scheduled_total", path="publish") == 0
    finally:
        await receiver.stop()
