"""/readyz answers 503 only for what a restart or a reschedule can fix, and names every check;
/metrics says which version runs and what the process costs (issue #14)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from relay import __version__
from relay.http import build_http_app
from relay.metrics import RelayMetrics

Checks = dict[str, str | None]
Probe = Callable[[Checks], Awaitable[tuple[int, dict[str, object]]]]
REFUSED = "MindVideo refused the API key (401): check RELAY_MINDVIDEO_API_KEY"


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    servers: list[TestServer] = []

    async def get(checks: Checks) -> tuple[int, dict[str, object]]:
        async def readiness() -> Checks:
            return checks

        server = TestServer(build_http_app(RelayMetrics(), readiness))
        await server.start_server()
        servers.append(server)
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/readyz")) as resp,
        ):
            body: dict[str, object] = await resp.json()
            return resp.status, body

    yield get
    for server in servers:
        await server.close()


async def test_all_checks_pass(probe: Probe) -> None:
    status, body = await probe({"kafka": None, "redis": None, "mindvideo": None})
    assert status == 200
    assert body == {"status": "ready", "checks": {"kafka": "ok", "redis": "ok", "mindvideo": "ok"}}


async def test_refused_credentials_are_reported_but_do_not_drain_the_pod(probe: Probe) -> None:
    status, body = await probe({"kafka": None, "redis": None, "mindvideo": REFUSED})
    assert status == 200, "a restart cannot fix a key: the pod must stay ready for drains"
    assert body["status"] == "degraded"
    assert body["checks"] == {"kafka": "ok", "redis": "ok", "mindvideo": REFUSED}


@pytest.mark.parametrize("failing", ["kafka", "redis", "webhooks"])
async def test_kafka_redis_and_the_dispatcher_make_it_unready(probe: Probe, failing: str) -> None:
    checks: Checks = {"kafka": None, "redis": None, "mindvideo": REFUSED, "webhooks": None}
    checks[failing] = f"{failing} is down"
    status, body = await probe(checks)
    assert status == 503
    assert body["status"] == "not_ready"
    named = body["checks"]
    assert isinstance(named, dict)
    assert named[failing] == f"{failing} is down"
    assert named["mindvideo"] == REFUSED
    assert set(named) == set(checks), "every check is named in the body"


def test_build_info_and_process_metrics() -> None:
    text = RelayMetrics().render().decode()
    assert f'relay_build_info{{version="{__version__}"}} 1.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert f"\n{name}" in text, name
