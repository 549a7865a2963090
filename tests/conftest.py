"""Session-wide real services for integration tests, and per-test isolation helpers.

Each service is started once per session on a free port and stopped by PID at the end.
Environment variables point the suite at services that already run instead:

* ``RELAY_TEST_KAFKA_BOOTSTRAP``: a broker with idempotence and transactions (else noida-db);
* ``RELAY_TEST_TANSU_BOOTSTRAP``: a broker that expires dead group members (else Tansu);
* ``RELAY_TEST_REDIS_URL``: a Redis to share (else a private redis-server / valkey-server).

Tests isolate themselves by name, not by wiping shared state: the ``unique`` suffix goes into
topic names and Redis keys, so no FLUSHALL is needed even on a shared server.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.support.pipeline import SIM_API_KEY, Pipeline, open_pipeline
from tests.support.redis_topologies import RedisCluster, start_redis_cluster
from tests.support.services import (
    ManagedProcess,
    ServiceEndpoint,
    TopicFactory,
    free_port,
    start_noida,
    start_redis,
    start_tansu,
)

# A test that asks for one of these talks to a real broker, Redis or relay process.
SERVICE_FIXTURES = frozenset(
    {
        "kafka_service",
        "tansu_service",
        "redis_service",
        "kafka_bootstrap",
        "tansu_bootstrap",
        "redis_url",
        "redis_client",
        "simulator",
        "pipeline",
        "tansu_pipeline",
        "redis_cluster",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real service ``integration``, so that
    ``python -m pytest -m "not integration"`` runs the unit tests alone, with no service.
    Modules that start processes by themselves set ``pytestmark`` instead."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


KAFKA_BOOTSTRAP_ENV = "RELAY_TEST_KAFKA_BOOTSTRAP"
TANSU_BOOTSTRAP_ENV = "RELAY_TEST_TANSU_BOOTSTRAP"
REDIS_URL_ENV = "RELAY_TEST_REDIS_URL"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceEndpoint]:
    """The main broker: ``$RELAY_TEST_KAFKA_BOOTSTRAP`` or a private noida-db."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        yield ServiceEndpoint(external, None)
        return
    proc, bootstrap = await start_noida(tmp_path_factory.mktemp("noida"))
    try:
        yield ServiceEndpoint(bootstrap, proc)
    finally:
        proc.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tansu_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceEndpoint]:
    """A broker that expires the sessions of killed consumers: env override or a private Tansu.

    Started only when a test asks for it. Tansu refuses aiokafka's idempotent producer and
    transactions, so clients talking to it must set ``enable_idempotence=False``.
    """
    external = os.environ.get(TANSU_BOOTSTRAP_ENV)
    if external:
        yield ServiceEndpoint(external, None)
        return
    proc, bootstrap = await start_tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield ServiceEndpoint(bootstrap, proc)
    finally:
        proc.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceEndpoint]:
    """``$RELAY_TEST_REDIS_URL`` or a private server, never the machine's default instance."""
    external = os.environ.get(REDIS_URL_ENV)
    if external:
        yield ServiceEndpoint(external, None)
        return
    proc, url = await start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield ServiceEndpoint(url, proc)
    finally:
        proc.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisCluster]:
    """A three-node Redis Cluster (Debian's redis-server and redis-cli), started on demand."""
    cluster = await start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: ServiceEndpoint) -> str:
    """Bootstrap address of the main broker (supports idempotence and transactions)."""
    return kafka_service.address


@pytest.fixture(scope="session")
def tansu_bootstrap(tansu_service: ServiceEndpoint) -> str:
    """Bootstrap address of the Tansu broker (no idempotent producer, no transactions)."""
    return tansu_service.address


@pytest.fixture(scope="session")
def redis_url(redis_service: ServiceEndpoint) -> str:
    """URL of the test Redis, e.g. ``redis://127.0.0.1:41234/0``."""
    return redis_service.address


@pytest.fixture
def unique() -> str:
    """A fresh hex string per test, for topic names, group ids and Redis key prefixes."""
    return uuid.uuid4().hex


@pytest.fixture
def topics(unique: str) -> TopicFactory:
    """``await topics(bootstrap, "requests", "results", partitions=3)`` -> unique topic names.

    Topics are left on the broker afterwards: their names never repeat, and a test that killed
    the broker must not fail in teardown because deleting them is impossible.
    """
    return TopicFactory(unique)


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(redis_url: str, unique: str) -> AsyncIterator[aioredis.Redis]:
    """A client to the test Redis; keys starting with ``unique`` are deleted afterwards.

    Tests should prefix their keys with ``unique`` so that they can share one server.
    """
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
        keys = [key async for key in client.scan_iter(match=f"{unique}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def sim_args() -> list[str]:
    """Simulator flags; a test overrides this fixture for other timelines or faults."""
    return ["--queued-s", "0.2", "--processing-s", "0.3-1.0", "--failure-rate", "0"]


@pytest.fixture
def simulator(tmp_path: Path, sim_args: list[str]) -> Iterator[tuple[ManagedProcess, str]]:
    port = free_port()
    proc = ManagedProcess(
        "sim",
        [
            sys.executable,
            "-m",
            "relay",
            "sim",
            "--port",
            str(port),
            "--api-key",
            SIM_API_KEY,
            "--seed",
            "7",
            *sim_args,
        ],
        tmp_path,
    )
    proc.start()
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def pipeline(
    kafka_bootstrap: str,
    redis_url: str,
    topics: TopicFactory,
    unique: str,
    simulator: tuple[ManagedProcess, str],
    tmp_path: Path,
) -> AsyncIterator[Pipeline]:
    """Topics, a running simulator and a factory for relay processes on the main broker
    (noida-db: idempotent producer on)."""
    async with open_pipeline(
        kafka_bootstrap, redis_url, topics, unique, simulator, tmp_path, enable_idempotence=True
    ) as pipe:
        yield pipe


@pytest_asyncio.fixture(loop_scope="session")
async def tansu_pipeline(
    tansu_bootstrap: str,
    redis_url: str,
    topics: TopicFactory,
    unique: str,
    simulator: tuple[ManagedProcess, str],
    tmp_path: Path,
) -> AsyncIterator[Pipeline]:
    """The same on Tansu, which expires the sessions of killed consumers (so a relay killed with
    SIGKILL and restarted gets its partitions back) but refuses the idempotent producer."""
    async with open_pipeline(
        tansu_bootstrap, redis_url, topics, unique, simulator, tmp_path, enable_idempotence=False
    ) as pipe:
        yield pipe
