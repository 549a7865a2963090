"""The lazy timeline (driven by the fake clock), snapshots, cancel, costs and output images."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    OTHER_KEY,
    FakeClock,
    SimClient,
    auth,
    get_json,
    ledger,
    png_size,
    submit,
    submit_ok,
)

SNAPSHOT_FIELDS = {
    "request_id",
    "task_id",
    "model",
    "status",
    "cost_estimate",
    "cost_actual",
    "output",
    "error",
    "created_at",
    "updated_at",
}


async def _snapshot(sim: SimClient, task_id: str, key: str | None = None) -> dict[str, Any]:
    return await get_json(sim, f"/api/v1/tasks/{task_id}", headers=auth(key) if key else auth())


async def test_status_follows_the_clock(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim, {"prompt": "x", "n": 2})
    snap = await _snapshot(sim, task["task_id"])
    assert set(snap) == SNAPSHOT_FIELDS
    assert (snap["status"], snap["cost_actual"], snap["output"], snap["error"]) == (
        "queued",
        None,
        None,
        None,
    )
    assert snap["updated_at"] == snap["created_at"] == task["created_at"]

    clock.advance(1.999)
    assert (await _snapshot(sim, task["task_id"]))["status"] == "queued"
    clock.advance(0.001)
    snap = await _snapshot(sim, task["task_id"])
    assert snap["status"] == "processing"
    assert snap["updated_at"] != snap["created_at"]
    clock.advance(4.9)
    assert (await _snapshot(sim, task["task_id"]))["status"] == "processing"
    clock.advance(0.1)
    snap = await _snapshot(sim, task["task_id"])
    assert snap["status"] == "succeeded"
    assert snap["cost_actual"] == snap["cost_estimate"] == 0.0504
    assert snap["error"] is None
    assert len(snap["output"]["images"]) == 2


async def test_range_durations_stay_within_bounds(make_sim: SimFactory, clock: FakeClock) -> None:
    sim = await make_sim(queued_s="1-2", processing_s="3-4")
    ids = [(await submit_ok(sim))["task_id"] for _ in range(20)]
    clock.advance(0.99)
    assert {(await _snapshot(sim, t))["status"] for t in ids} == {"queued"}
    clock.advance(1.02)
    assert {(await _snapshot(sim, t))["status"] for t in ids} == {"processing"}
    clock.advance(4)
    assert {(await _snapshot(sim, t))["status"] for t in ids} == {"succeeded"}


async def test_failed_task_has_error_and_no_cost(make_sim: SimFactory, clock: FakeClock) -> None:
    sim = await make_sim(failure_rate=1.0)
    task = await submit_ok(sim)
    clock.advance(7)
    snap = await _snapshot(sim, task["task_id"])
    assert snap["status"] == "failed"
    assert snap["error"]["code"] == "generation_failed"
    assert snap["error"]["message"]
    assert snap["output"] is None
    assert snap["cost_actual"] == 0.0


async def test_failure_rate_is_a_share(make_sim: SimFactory, clock: FakeClock) -> None:
    sim = await make_sim(failure_rate=0.5, seed=3)
    ids = [(await submit_ok(sim))["task_id"] for _ in range(200)]
    clock.advance(7)
    failed = sum([(await _snapshot(sim, t))["status"] == "failed" for t in ids])
    assert 70 < failed < 130


@pytest.mark.parametrize("advance_s", [0.0, 3.0])
async def test_cancel_before_terminal(sim: SimClient, clock: FakeClock, advance_s: float) -> None:
    task = await submit_ok(sim)
    clock.advance(advance_s)
    resp = await sim.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=auth())
    assert resp.status == 200
    snap = await resp.json()
    assert set(snap) == SNAPSHOT_FIELDS
    assert snap["status"] == "cancelled"
    assert snap["cost_actual"] == 0.0
    assert snap["output"] is None
    clock.advance(60)
    assert (await _snapshot(sim, task["task_id"]))["status"] == "cancelled"
    again = await sim.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=auth())
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "task_not_cancellable"


async def test_cancel_after_terminal_is_409(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim)
    clock.advance(7)
    resp = await sim.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=auth())
    assert resp.status == 409
    assert "succeeded" in (await resp.json())["error"]["message"]
    assert (await _snapshot(sim, task["task_id"]))["status"] == "succeeded"


async def test_unknown_or_foreign_task_is_404(sim: SimClient) -> None:
    task = await submit_ok(sim)
    for path in ("/api/v1/tasks/task_nope", f"/api/v1/tasks/{task['task_id']}"):
        resp = await sim.get(path, headers=auth(OTHER_KEY))
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "task_not_found"
    cancel = await sim.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=auth(OTHER_KEY))
    assert cancel.status == 404
    assert (await _snapshot(sim, task["task_id"]))["status"] == "queued"


async def test_output_urls_serve_real_pngs(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim, {"prompt": "x", "n": 3})
    clock.advance(7)
    urls = [img["url"] for img in (await _snapshot(sim, task["task_id"]))["output"]["images"]]
    origin = str(sim.make_url(""))
    assert urls == [f"{origin}/_sim/images/{task['task_id']}/{i}.png" for i in range(3)]
    bodies = []
    for url in urls:
        resp = await sim.session.get(url)
        assert resp.status == 200
        assert resp.content_type == "image/png"
        data = await resp.read()
        assert png_size(data) == (8, 8)
        bodies.append(data)
    assert len(set(bodies)) == 3
    missing = await sim.get(f"/_sim/images/{task['task_id']}/3.png")
    assert missing.status == 404


async def test_images_only_exist_for_succeeded_tasks(sim: SimClient) -> None:
    task = await submit_ok(sim)
    assert (await sim.get(f"/_sim/images/{task['task_id']}/0.png")).status == 404


async def test_public_base_url_replaces_request_origin(
    make_sim: SimFactory, clock: FakeClock
) -> None:
    sim = await make_sim(public_base_url="https://cdn.example.com/mv/")
    task = await submit_ok(sim)
    clock.advance(7)
    snap = await _snapshot(sim, task["task_id"])
    url = f"https://cdn.example.com/mv/_sim/images/{task['task_id']}/0.png"
    assert snap["output"]["images"] == [{"url": url}]


async def test_ledger_tracks_status_and_actual_cost(sim: SimClient, clock: FakeClock) -> None:
    done = await submit_ok(sim, {"prompt": "a", "n": 2}, idempotency_key="a")
    cancelled = await submit_ok(sim, {"prompt": "b", "resolution": "4K"})
    await sim.post(f"/api/v1/tasks/{cancelled['task_id']}/cancel", headers=auth())
    running = await submit_ok(sim, {"prompt": "c", "resolution": "1K"})
    book = await ledger(sim)
    assert book["count"] == 3
    assert book["total_estimate_usd"] == 0.0504 + 0.0504 + 0.0126
    assert book["total_actual_usd"] == 0.0
    clock.advance(7)
    await sim.post(f"/api/v1/tasks/{running['task_id']}/cancel", headers=auth())
    book = await ledger(sim)
    by_task = {charge["task_id"]: charge for charge in book["charges"]}
    assert by_task[done["task_id"]]["status"] == "succeeded"
    assert by_task[done["task_id"]]["cost_actual"] == 0.0504
    assert by_task[done["task_id"]]["amount_usd"] == 0.0504
    assert by_task[done["task_id"]]["request_id"] == done["request_id"]
    assert by_task[cancelled["task_id"]]["status"] == "cancelled"
    assert by_task[cancelled["task_id"]]["cost_actual"] == 0.0
    assert by_task[running["task_id"]]["status"] == "succeeded"  # cancel came too late
    assert book["total_actual_usd"] == 0.0504 + 0.0126
    assert book["total_estimate_usd"] == 0.1134


async def test_many_tasks_need_no_timers(sim: SimClient, clock: FakeClock) -> None:
    assert (await submit(sim)).status == 200  # opens the client's keep-alive connection
    tasks_before = len(asyncio.all_tasks())
    for _ in range(999):
        assert (await submit(sim)).status == 200
    assert len(asyncio.all_tasks()) <= tasks_before
    clock.advance(3)
    stats = await get_json(sim, "/_sim/stats")
    assert stats["tasks"] == {
        "queued": 0,
        "processing": 1000,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert stats["streams_open"] == 0
