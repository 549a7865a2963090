"""Fixtures: a simulator app on a test server per test, driven by a fake clock by default."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from relay.sim import SimConfig, build_app
from tests.sim.helpers import KEY, OTHER_KEY, FakeClock, SimClient

SimFactory = Callable[..., Awaitable[SimClient]]

# Long enough that a test never crosses a transition by accident, short enough to read.
BASE_CONFIG: dict[str, Any] = {
    "api_keys": [KEY, OTHER_KEY],
    "queued_s": 2,
    "processing_s": 5,
    "seed": 1,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    """``await make_sim(**config)``: a client of a new simulator (fake clock unless real_clock)."""
    clients: list[SimClient] = []

    async def make(*, real_clock: bool = False, **overrides: Any) -> SimClient:
        config = SimConfig.model_validate({**BASE_CONFIG, **overrides})
        app = build_app(config, clock=None if real_clock else clock)
        client: SimClient = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def sim(make_sim: SimFactory) -> SimClient:
    """A simulator with the base config and the fake clock."""
    return await make_sim()
