"""Fault injection: 429 and 5xx before any side effect, latency, stream drops, run-time changes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    FakeClock,
    SimClient,
    auth,
    get_json,
    ledger,
    read_stream,
    submit,
    submit_ok,
)


async def _put_faults(sim: SimClient, **faults: Any) -> dict[str, Any]:
    resp = await sim.put("/_sim/faults", json=faults)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_429_carries_retry_after_and_charges_nothing(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_429=1.0, retry_after_s=7)
    for _ in range(5):
        resp = await submit(sim, idempotency_key="order-1")
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["error"]["code"] == "rate_limited"
    assert (await ledger(sim))["count"] == 0
    stats = await get_json(sim, "/_sim/stats")
    assert stats["tasks_total"] == 0
    assert stats["requests"]["POST /api/v1/tasks"] == {"429": 5}


async def test_5xx_creates_and_charges_nothing(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_5xx=1.0, seed=5)
    statuses = set()
    for _ in range(30):
        resp = await submit(sim, idempotency_key="order-1")
        statuses.add(resp.status)
        assert "error" in await resp.json()
        if resp.status == 503:
            assert resp.headers["Retry-After"] == "1"
    assert statuses == {500, 502, 503}
    assert (await ledger(sim))["count"] == 0
    await _put_faults(sim, rate_5xx=0.0)
    first = await submit_ok(sim, idempotency_key="order-1")
    assert first["status"] == "queued"
    assert (await ledger(sim))["count"] == 1


async def test_rates_are_shares_of_requests(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_429=0.3, rate_5xx=0.2, seed=11)
    codes = [(await submit(sim)).status for _ in range(400)]
    assert 80 < codes.count(429) < 160
    assert 40 < sum(code >= 500 for code in codes) < 120
    assert (await ledger(sim))["count"] == codes.count(200)


async def test_faults_hit_every_api_route_but_never_sim_routes(make_sim: SimFactory) -> None:
    sim = await make_sim()
    task = await submit_ok(sim)
    await _put_faults(sim, rate_429=1.0)
    for method, path in (
        ("GET", f"/api/v1/tasks/{task['task_id']}"),
        ("GET", f"/api/v1/tasks/{task['task_id']}/events"),
        ("POST", f"/api/v1/tasks/{task['task_id']}/cancel"),
    ):
        assert (await sim.request(method, path, headers=auth())).status == 429
    for path in ("/_sim/ledger", "/_sim/stats", "/_sim/faults", "/_sim/keys"):
        assert (await sim.get(path)).status == 200
    assert (await sim.post("/_sim/reset")).status == 200


async def test_latency_is_added_to_api_responses_only(make_sim: SimFactory) -> None:
    sim = await make_sim(latency_ms=150)
    started = time.monotonic()
    await submit_ok(sim)
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    await get_json(sim, "/_sim/ledger")
    assert time.monotonic() - started < 0.1


async def test_runtime_put_changes_faults_and_answers_full_config(make_sim: SimFactory) -> None:
    sim = await make_sim()
    initial = await get_json(sim, "/_sim/faults")
    assert initial == {
        "failure_rate": 0.0,
        "rate_429": 0.0,
        "retry_after_s": 1,
        "rate_5xx": 0.0,
        "latency_ms": 0.0,
        "reply_delay_ms": 0.0,
        "stream_drop_rate": 0.0,
    }
    updated = await _put_faults(sim, rate_429=1.0, retry_after_s=3)
    assert updated == {**initial, "rate_429": 1.0, "retry_after_s": 3}
    assert await get_json(sim, "/_sim/faults") == updated
    resp = await submit(sim)
    assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    await _put_faults(sim, rate_429=0.0)
    assert (await submit(sim)).status == 200


@pytest.mark.parametrize(
    "patch",
    [
        {"rate_429": 1.5},
        {"rate_5xx": -0.1},
        {"rate_429": 0.6, "rate_5xx": 0.6},
        {"latency_ms": "slow"},
        {"retry_after_s": -1},
        {"unknown_fault": 1},
    ],
)
async def test_invalid_fault_changes_are_refused_whole(
    sim: SimClient, patch: dict[str, Any]
) -> None:
    before = await get_json(sim, "/_sim/faults")
    resp = await sim.put("/_sim/faults", json={"stream_drop_rate": 0.5, **patch})
    assert resp.status == 422
    assert (await resp.json())["error"]["details"]
    assert await get_json(sim, "/_sim/faults") == before


async def test_runtime_failure_rate_applies_to_new_tasks(make_sim: SimFactory) -> None:
    sim = await make_sim(queued_s=0, processing_s=0)
    before = await submit_ok(sim)
    await _put_faults(sim, failure_rate=1.0)
    after = await submit_ok(sim)
    statuses = [
        (await get_json(sim, f"/api/v1/tasks/{t['task_id']}", headers=auth()))["status"]
        for t in (before, after)
    ]
    assert statuses == ["succeeded", "failed"]


async def test_same_seed_gives_same_faults_and_outcomes(make_sim: SimFactory) -> None:
    runs = []
    for _ in range(2):
        sim = await make_sim(seed=42, rate_429=0.5, failure_rate=0.5, queued_s=0, processing_s=0)
        codes = [(await submit(sim)).status for _ in range(20)]
        book = await ledger(sim)
        runs.append((codes, [charge["status"] for charge in book["charges"]]))
    assert runs[0] == runs[1]
    assert len(set(runs[0][0])) == 2


async def test_runtime_stream_drop(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim)
    clock.advance(10)
    await _put_faults(sim, stream_drop_rate=1.0)
    path = f"/api/v1/tasks/{task['task_id']}/events"
    dropped = await read_stream(await sim.get(path, headers=auth()))
    assert (dropped.complete, dropped.statuses) == (False, ["queued", "processing"])
    await _put_faults(sim, stream_drop_rate=0.0)
    whole = await read_stream(await sim.get(path, headers=auth()))
    assert (whole.complete, whole.statuses[-1]) == (True, "succeeded")
