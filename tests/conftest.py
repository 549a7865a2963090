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
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.services import (
    ServiceEndpoint,
    TopicFactory,
    start_noida,
    start_redis,
    start_tansu,
)

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
