"""The whole pipeline on the Redis topologies production has (DESIGN §8): a real Redis Cluster,
a Sentinel-monitored master that fails over while requests are in flight, and a TLS-only server.
What a user would notice is checked: every request gets its result and its webhook, and the
simulator's ledger charges each exactly once."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster as ClusterClient

from tests.support.cli import wait_for_exit
from tests.support.pipeline import Pipeline, charges_per_key
from tests.support.redis_topologies import (
    SENTINEL_MASTER,
    RedisCluster,
    start_redis_tls,
    start_sentinel_group,
)
from tests.support.services import ManagedProcess, TopicFactory
from tests.support.tls import write_tls_files
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import request, verified, webhook_dlq, webhook_env

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 90.0


async def test_pipeline_and_webhooks_on_a_redis_cluster(
    pipeline: Pipeline, redis_cluster: RedisCluster, topics: TopicFactory, unique: str
) -> None:
    dlq = await webhook_dlq(pipeline, topics)
    receiver = Receiver()
    await receiver.start()
    try:
        _, port = await pipeline.start_relay(
            RELAY_REDIS_URL=redis_cluster.url, RELAY_REDIS_MODE="cluster", **webhook_env(dlq)
        )
        keys = [f"cluster-{unique[:8]}-{i}" for i in range(24)]
        records = [request(key, receiver.url) for key in keys]
        await pipeline.produce(records)
        results = await pipeline.results(set(keys), RESULT_TIMEOUT_S)
        assert {r.key for r in results} == set(keys)
        assert {r.value["status"] for r in results} == {"succeeded"}
        assert await receiver.wait_for(lambda: len(receiver.answered()) == len(keys), 30)
        assert {verified(d)["idempotency_key"] for d in receiver.answered().values()} == set(keys)

        cluster = ClusterClient.from_url(redis_cluster.url)
        try:
            stored = [k async for k in cluster.scan_iter(match=f"{unique}:idem:*")]
            nodes = {getattr(cluster.get_node_from_key(k), "name", None) for k in stored}
        finally:
            await cluster.aclose()
        assert len(stored) == len(keys)
        assert len(nodes) == len(redis_cluster.ports), "the records are spread over the cluster"

        # The same requests again: found in the cluster, nothing submitted or charged twice.
        await pipeline.produce(records)
        deadline = time.monotonic() + 30
        while await pipeline.metric(port, "relay_dedupe_hits_total") < len(keys):
            assert time.monotonic() < deadline, "the replayed requests were not deduplicated"
            await asyncio.sleep(0.2)
        charges = await charges_per_key(pipeline)
        assert {k: charges[k] for k in keys} == dict.fromkeys(keys, 1)
    finally:
        await receiver.stop()


async def test_sentinel_failovers_under_load_lose_nothing_and_charge_once(
    pipeline: Pipeline, tmp_path: Path, unique: str
) -> None:
    """Two failovers while requests arrive: one asked of the sentinel, one by killing the
    master. A write the dead master acknowledged but never replicated may be lost; the
    request is then submitted again with the same Idempotency-Key, which MindVideo does not
    charge twice."""
    group = await start_sentinel_group(tmp_path / "sentinel")
    try:
        first_master = await group.master_port()
        await pipeline.start_relay(
            RELAY_REDIS_MODE="sentinel",
            RELAY_REDIS_URL=f"redis://{SENTINEL_MASTER}/0",  # the host is the sentinels' business
            RELAY_REDIS_SENTINELS=group.sentinels,
            RELAY_REDIS_SENTINEL_MASTER=SENTINEL_MASTER,
        )
        keys = [f"sentinel-{unique[:8]}-{i:03d}" for i in range(150)]
        waves = [keys[i : i + 10] for i in range(0, len(keys), 10)]

        async def produce_in_waves() -> None:
            for wave in waves:
                await pipeline.produce([request(key) for key in wave])
                await asyncio.sleep(0.4)

        producing = asyncio.create_task(produce_in_waves())
        await pipeline.results(set(waves[0]), RESULT_TIMEOUT_S)  # work is flowing
        promoted = await group.failover()
        assert promoted == group.ports["replica"] != first_master
        await pipeline.results(set(waves[len(waves) // 2]), RESULT_TIMEOUT_S)
        assert not producing.done(), "the second failover happens under load too"
        assert await group.kill_master() == first_master
        await producing
        results = await pipeline.results(set(keys), RESULT_TIMEOUT_S)
        missing = set(keys) - {r.key for r in results}
        assert not missing, f"{len(missing)} requests lost in the failovers"
        charges = await charges_per_key(pipeline)
        twice = {k: n for k, n in charges.items() if k in set(keys) and n != 1}
        assert not twice, f"charged more than once: {twice}"
        assert all(charges[k] == 1 for k in keys)
    finally:
        group.stop()


async def test_rediss_with_a_private_ca(pipeline: Pipeline, tmp_path: Path, unique: str) -> None:
    tls = write_tls_files(tmp_path / "tls")
    server, url = await start_redis_tls(tmp_path / "redis-tls", tls)
    try:
        await pipeline.start_relay(RELAY_REDIS_URL=url, RELAY_REDIS_SSL_CAFILE=str(tls.ca))
        keys = [f"tls-{unique[:8]}-{i}" for i in range(5)]
        await pipeline.produce([request(key) for key in keys])
        results = await pipeline.results(set(keys), RESULT_TIMEOUT_S)
        assert {r.key for r in results} == set(keys)
        charges = await charges_per_key(pipeline)
        assert {k: charges[k] for k in keys} == dict.fromkeys(keys, 1)

        untrusting = ManagedProcess(
            "relay-without-ca",
            [sys.executable, "-m", "relay", "run"],
            tmp_path,
            pipeline.relay_env(RELAY_REDIS_URL=url, RELAY_HTTP_PORT="0"),
        )
        untrusting.start()
        try:
            assert await wait_for_exit(untrusting) == 1, "a relay that cannot trust Redis stops"
        finally:
            untrusting.stop()
        log = untrusting.log_path.read_text()
        assert "could not start" in log
        assert "certificate verify failed" in log
        assert "Traceback" not in log
    finally:
        server.stop()
