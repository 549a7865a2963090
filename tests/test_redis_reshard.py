"""Webhook state on a real three-master Redis Cluster (issue 17): deliveries spread their keys
over every master (``RELAY_WEBHOOK_SHARDS`` hash tags), and requests and webhooks go on through a
slot migration (``redis-cli --cluster reshard`` while requests flow) with nothing lost and
nothing charged twice."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.support.pipeline import Pipeline, charges_per_key
from tests.support.redis_topologies import RedisCluster
from tests.support.services import TopicFactory, require_tool
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import request, webhook_dlq, webhook_env

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
ENDPOINTS = 12
SHARDS = 16  # RELAY_WEBHOOK_SHARDS's default
WAVES = 3
PER_WAVE = 16
EXTRA_SLOTS = 200  # moved past the first webhook shard's slot: idempotency records too


async def _slots_by_node(cluster: RedisCluster) -> dict[str, list[int]]:
    """Each master's id and the slots it owns, in order."""
    client = Redis(port=cluster.ports[0], decode_responses=True)
    try:
        ranges = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    out: dict[str, list[int]] = {}
    for start, end, master, *_ in ranges:
        out.setdefault(str(master[2]), []).extend(range(int(start), int(end) + 1))
    return {node: sorted(slots) for node, slots in out.items()}


def _plan(slots: dict[str, list[int]], tags: list[str]) -> tuple[str, str, int, int]:
    """Where to move slots from and to, and how many, so that a webhook shard's slot moves:
    ``redis-cli --cluster reshard`` takes the source's slots in order. Also the shard slot."""
    best: tuple[int, str, int] | None = None
    for node, owned in slots.items():
        position = {slot: i for i, slot in enumerate(owned)}
        for tag in tags:
            i = position.get(key_slot(tag.encode()))
            if i is not None and (best is None or i < best[0]):
                best = (i, node, key_slot(tag.encode()))
    assert best is not None
    i, source, slot = best
    target = next(node for node in slots if node != source)
    return source, target, min(len(slots[source]) - 1, i + 1 + EXTRA_SLOTS), slot


async def _keys_by_master(cluster: RedisCluster, pattern: str) -> dict[int, int]:
    """How many keys matching ``pattern`` each master holds."""
    out = {}
    for port in cluster.ports:
        client = Redis(port=port)
        try:
            out[port] = len([k async for k in client.scan_iter(match=pattern, count=1000)])
        finally:
            await client.aclose()
    return out


async def _reshard(cluster: RedisCluster, source: str, target: str, count: int) -> str:
    cli = require_tool("redis-cli", "redis-tools")
    proc = await asyncio.create_subprocess_exec(
        cli,
        "--cluster",
        "reshard",
        f"127.0.0.1:{cluster.ports[0]}",
        *("--cluster-from", source, "--cluster-to", target),
        *("--cluster-slots", str(count), "--cluster-yes"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()[-2000:]
    return output.decode()


async def test_webhook_state_spreads_over_the_masters_and_survives_a_reshard(
    pipeline: Pipeline, redis_cluster: RedisCluster, topics: TopicFactory, unique: str
) -> None:
    # Each delivery's first attempt fails, so every delivery waits in Redis for its retry.
    receiver = Receiver(behaviour=lambda attempt: 500 if attempt == 1 else 200)
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    try:
        env = webhook_env(dlq, RELAY_WEBHOOK_RETRY_SCHEDULE="0,1.5,1,1,1,1")
        _, port = await pipeline.start_relay(
            RELAY_REDIS_URL=redis_cluster.url, RELAY_REDIS_MODE="cluster", **env
        )
        u = unique[:8]
        waves = [[f"rs-{u}-{w}-{i}" for i in range(PER_WAVE)] for w in range(WAVES)]
        keys = [k for wave in waves for k in wave]

        def records(wave: list[str]) -> list[tuple[bytes, bytes]]:
            return [request(k, f"{receiver.url}/e{i % ENDPOINTS}") for i, k in enumerate(wave)]

        await pipeline.produce(records(waves[0]))
        # The first wave's deliveries wait for their retry: their hashes are on every master.
        pending = f"{pipeline.redis_prefix}:{{{pipeline.redis_prefix}:wh:*}}:d:*"
        deadline = time.monotonic() + TIMEOUT_S
        while not all((spread := await _keys_by_master(redis_cluster, pending)).values()):
            assert time.monotonic() < deadline, f"deliveries not on every master: {spread}"
            await asyncio.sleep(0.1)

        # Slots move, a webhook shard's among them, while the other waves flow.
        prefix = pipeline.redis_prefix
        tags = [f"{{{prefix}:wh:{n}}}" for n in range(SHARDS)]
        source, target, count, moved = _plan(await _slots_by_node(redis_cluster), tags)
        reshard = asyncio.create_task(_reshard(redis_cluster, source, target, count))
        for wave in waves[1:]:
            await pipeline.produce(records(wave))
            await asyncio.sleep(0.3)
        await reshard
        assert moved in (await _slots_by_node(redis_cluster))[target], "the shard's slot moved"

        results = await pipeline.results(set(keys), TIMEOUT_S)
        assert {r.key for r in results} == set(keys)
        assert len(results) == len(keys), "one result per key"

        def all_answered() -> bool:
            return len(receiver.answered()) == len(keys)

        assert await receiver.wait_for(all_answered, TIMEOUT_S), "a webhook was lost"
        charges = await charges_per_key(pipeline)
        assert {k: charges[k] for k in keys} == dict.fromkeys(keys, 1)
        assert await pipeline.metric(port, "relay_webhook_deliveries_total", outcome="delivered")
    finally:
        await receiver.stop()
