"""The status page shows what the metrics show, never prompts or secrets, and a token guards it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from relay.http import build_http_app
from relay.metrics import RelayMetrics
from relay.models import ResultRecord, event_id_for, rejection
from relay.status import RecentResults

MODEL = "apimart-doubao-seedance-4-0"
Serve = Callable[[RelayMetrics, RecentResults, str | None], Awaitable[str]]


async def _ready() -> dict[str, str | None]:
    return {"kafka": None, "redis": None, "mindvideo": None}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TestServer] = []

    async def start(metrics: RelayMetrics, recent: RecentResults, token: str | None) -> str:
        server = TestServer(build_http_app(metrics, _ready, recent=recent, token=token))
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


def _succeeded(key: str) -> ResultRecord:
    return ResultRecord.model_validate(
        {
            "event_id": event_id_for(key, "task.succeeded"),
            "type": "task.succeeded",
            "idempotency_key": key,
            "model": MODEL,
            "task_id": "task_1",
            "status": "succeeded",
            "output": {"images": [{"url": "https://cdn.example/secret-output.png"}]},
            "cost_estimate": 0.0252,
            "cost_actual": 0.0252,
            "completed_at": "2026-11-25T19:00:00.000Z",
            "metadata": {"customer_email": "jane@example.com"},
        }
    )


async def test_status_json_matches_the_metrics_and_hides_inputs(serve: Serve) -> None:
    metrics = RelayMetrics()
    metrics.tasks_submitted.labels(MODEL).inc(3)
    metrics.tasks_terminal.labels(MODEL, "succeeded").inc(2)
    metrics.tasks_terminal.labels(MODEL, "rejected").inc(1)
    metrics.cost_actual.labels(MODEL).inc(0.0504)
    recent = RecentResults()
    recent.add(_succeeded("order-1"))
    recent.add(rejection("order-2", "invalid_input", "input.prompt is required"))
    base = await serve(metrics, recent, None)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "status.json") as resp:
            assert resp.status == 200
            text = await resp.text()
            doc = await resp.json()
        async with session.get(base) as resp:
            assert resp.status == 200
            assert "text/html" in resp.headers["Content-Type"]
            assert "mindvideo-relay" in await resp.text()
    assert doc["counts"]["submitted"] == 3
    assert doc["counts"]["succeeded"] == 2
    assert doc["counts"]["rejected"] == 1
    assert doc["spend_usd"]["actual"] == 0.0504
    assert [r["idempotency_key"] for r in doc["recent_results"]] == ["order-2", "order-1"]
    assert [r["error_code"] for r in doc["recent_failures"]] == ["invalid_input"]
    for hidden in ("secret-output.png", "jane@example.com", "input.prompt is required"):
        assert hidden not in text


async def test_token_guards_everything_but_probes_and_metrics(serve: Serve) -> None:
    base = await serve(RelayMetrics(), RecentResults(), "s3cret-token")
    async with aiohttp.ClientSession() as session:
        for path in ("healthz", "readyz", "metrics"):
            async with session.get(base + path) as resp:
                assert resp.status == 200, path
        for path in ("", "status.json"):
            async with session.get(base + path) as resp:
                assert resp.status == 401, path
                assert "s3cret" not in await resp.text()
            async with session.get(base + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            headers = {"Authorization": "Bearer s3cret-token"}
            async with session.get(base + path, headers=headers) as resp:
                assert resp.status == 200, path
            async with session.get(base + path, params={"token": "s3cret-token"}) as resp:
                assert resp.status == 200, path
