"""The HTTP endpoints answer before the consumer group is joined, and /readyz says "joining"
until the first assignment (issue 16): a slow join is observable, not silence."""

from __future__ import annotations

import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from tests.support.pipeline import Pipeline


class SlowToLetGo(ConsumerRebalanceListener):  # type: ignore[misc]
    """A member that takes its time to give its partitions up: the group's rebalance waits."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


async def test_readyz_says_joining_while_the_group_join_waits(pipeline: Pipeline) -> None:
    listener = SlowToLetGo()
    member = AIOKafkaConsumer(
        bootstrap_servers=pipeline.bootstrap,
        group_id=pipeline.group_id,
        max_poll_interval_ms=20_000,
        session_timeout_ms=10_000,
    )
    member.subscribe([pipeline.requests_topic], listener=listener)
    await member.start()
    polling = asyncio.create_task(member.getmany(timeout_ms=30_000))
    try:
        deadline = time.monotonic() + 15
        while not member.assignment():
            assert time.monotonic() < deadline, "the first member never got its partitions"
            await asyncio.sleep(0.1)
        _, port = await pipeline.start_relay_unjoined()
        status, body = await pipeline.relay_get(port, "/readyz")
        assert status == 503, body
        assert "joining" in json.loads(body)["checks"]["kafka"], body
        assert await pipeline.metric(port, "relay_build_info") == 1, "/metrics answers too"
    finally:
        listener.release.set()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await member.stop()
