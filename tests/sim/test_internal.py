"""The /_sim/ control surface (ledger, stats, reset, forget), and the JSON of unknown routes."""

from __future__ import annotations

import asyncio

from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    KEY,
    FakeClock,
    SimClient,
    auth,
    get_json,
    ledger,
    submit,
    submit_ok,
)


async def test_empty_ledger(sim: SimClient) -> None:
    assert await ledger(sim) == {
        "charges": [],
        "count": 0,
        "total_estimate_usd": 0.0,
        "total_actual_usd": 0.0,
    }


async def test_ledger_sums_are_exact(sim: SimClient, clock: FakeClock) -> None:
    for _ in range(10):
        await submit_ok(sim, {"prompt": "x", "resolution": "1K"})
    for _ in range(3):
        await submit_ok(sim, {"prompt": "x", "n": 3, "resolution": "4K"})
    clock.advance(10)
    book = await ledger(sim)
    assert book["count"] == 13
    assert book["total_estimate_usd"] == 0.5796  # 10 x 0.0126 + 3 x 0.1512, no float drift
    assert book["total_actual_usd"] == 0.5796
    charge = book["charges"][0]
    assert set(charge) == {
        "idempotency_key",
        "task_id",
        "request_id",
        "model",
        "amount_usd",
        "created_at",
        "status",
        "cost_actual",
    }


async def test_stats_count_tasks_and_requests(sim: SimClient, clock: FakeClock) -> None:
    first = await submit_ok(sim)
    clock.advance(2)
    await submit_ok(sim)
    await submit(sim, {"prompt": ""})
    await sim.get(f"/api/v1/tasks/{first['task_id']}", headers=auth())
    await sim.get("/api/v1/tasks/task_nope", headers=auth())
    await sim.get("/nowhere")
    stats = await get_json(sim, "/_sim/stats")
    assert stats["tasks"] == {
        "queued": 1,
        "processing": 1,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert stats["tasks_total"] == 2
    assert stats["charges"] == 2
    requests = stats["requests"]
    assert requests["POST /api/v1/tasks"] == {"200": 2, "422": 1}
    assert requests["GET /api/v1/tasks/{task_id}"] == {"200": 1, "404": 1}
    assert requests["unmatched"] == {"404": 1}


async def test_reset_clears_history_but_keeps_keys_and_faults(sim: SimClient) -> None:
    task = await submit_ok(sim)
    await sim.post("/_sim/keys", json={"no_credit": [KEY]})
    await sim.put("/_sim/faults", json={"latency_ms": 1})
    resp = await sim.post("/_sim/reset")
    assert resp.status == 200
    assert (await ledger(sim))["count"] == 0
    stats = await get_json(sim, "/_sim/stats")
    assert stats["tasks_total"] == 0
    # Only what came after the clear: the reset itself and the ledger read.
    assert stats["requests"] == {"GET /_sim/ledger": {"200": 1}, "POST /_sim/reset": {"200": 1}}
    lookup = await sim.get(f"/api/v1/tasks/{task['task_id']}", headers=auth())
    assert lookup.status == 404
    assert (await submit(sim)).status == 402
    assert (await get_json(sim, "/_sim/faults"))["latency_ms"] == 1.0


async def test_unknown_routes_are_json_404_with_request_id(sim: SimClient) -> None:
    for path in ("/", "/api/v1/nope", "/api/v2/tasks", "/_sim/nope"):
        resp = await sim.get(path, headers=auth())
        assert resp.status == 404, path
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"]["code"] == "not_found"
        assert resp.headers["X-Request-Id"].startswith("req_")


async def test_wrong_method_is_json_405(sim: SimClient) -> None:
    resp = await sim.delete("/api/v1/tasks", headers=auth())
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_every_response_has_its_own_request_id(sim: SimClient) -> None:
    responses = [
        await submit(sim),
        await submit(sim, key="mv_test_nope"),
        await sim.get("/_sim/ledger"),
        await sim.get("/_sim/images/task_x/0.png"),
    ]
    ids = [resp.headers["X-Request-Id"] for resp in responses]
    assert len(set(ids)) == len(ids)


async def test_forget_makes_a_task_unknown_and_ends_its_stream(make_sim: SimFactory) -> None:
    sim = await make_sim(real_clock=True, queued_s=30, processing_s=30)
    task = await submit_ok(sim, idempotency_key="order-1")
    other = await submit_ok(sim)
    stream = await sim.get(f"/api/v1/tasks/{task['task_id']}/events", headers=auth())
    await stream.content.readuntil(b"event: queued")

    resp = await sim.post("/_sim/forget", json={"task_ids": [task["task_id"], "task_nope"]})
    assert resp.status == 200
    assert await resp.json() == {"forgotten": [task["task_id"]]}
    rest = await asyncio.wait_for(stream.content.read(), timeout=1)
    assert b"event:" not in rest, "the stream ends without a terminal event"
    lookup = await sim.get(f"/api/v1/tasks/{task['task_id']}", headers=auth())
    assert lookup.status == 404
    assert (await lookup.json())["error"]["code"] == "task_not_found"
    assert (await sim.get(f"/api/v1/tasks/{other['task_id']}", headers=auth())).status == 200
    book = await ledger(sim)
    assert book["count"] == 2, "charges stay on the ledger"
    assert {c["status"] for c in book["charges"] if c["task_id"] == task["task_id"]} == {"unknown"}
    again = await submit_ok(sim, idempotency_key="order-1")
    assert again["task_id"] != task["task_id"], "the idempotency key is free again"


async def test_forget_needs_a_list_of_task_ids(sim: SimClient) -> None:
    resp = await sim.post("/_sim/forget", json={"task_ids": "task_x"})
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "invalid_request"
