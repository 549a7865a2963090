"""Webhook state on a real three-master Redis Cluster (issue 17): deliveries spread their keys
over every master (``RELAY_WEBHOOK_SHARDS`` hash tags), and requests and webhooks go on through a
slot migration (``redis-cli --cluster reshard`` while requests flow) with nothing lost and
nothing charged twice."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from tests.support.pipeline import Pipeline, charges_per_key
from tests.support.redis_topologies import RedisCluster
from tests.support.services import TopicFactory, require_tool
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import request, webhook_dlq, webhook_env

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
ENDPOINTS = 12
WAVES = 3
PER_WAVE = 16
RESHARD_SLOTS = 1500


async def _node_ids(cluster: RedisCluster) -> list[str]:
    ids = []
    for port in cluster.ports:
        client = Redis(port=port, decode_responses=True)
        try:
            ids.append(str(await client.execute_command("CLUSTER", "MYID")))  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
    return ids


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


async def _reshard(cluster: RedisCluster, source: str, target: str) -> str:
    cli = require_tool("redis-cli", "redis-tools")
    proc = await asyncio.create_subprocess_exec(
        cli,
        "--cluster",
        "reshard",
        f"127.0.0.1:{cluster.ports[0]}",
        *("--cluster-from", source, "--cluster-to", target),
        *("--cluster-slots", str(RESHARD_SLOTS), "--cluster-yes"),
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

        # Slots move from the first master to the second while the other waves flow.
        ids = await _node_ids(redis_cluster)
        reshard = asyncio.create_task(_reshard(redis_cluster, ids[0], ids[1]))
        for wave in waves[1:]:
            await pipeline.produce(records(wave))
            await asyncio.sleep(0.3)
        await reshard

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
