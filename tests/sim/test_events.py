"""GET /api/v1/tasks/{id}/events: SSE framing, replay, Last-Event-ID, keep-alive, end, drops."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    OTHER_KEY,
    FakeClock,
    SimClient,
    auth,
    parse_sse,
    read_stream,
    submit_ok,
)


def _events_path(task_id: str) -> str:
    return f"/api/v1/tasks/{task_id}/events"


async def test_finished_task_replays_every_event_and_ends(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim, {"prompt": "x", "n": 2})
    clock.advance(10)
    resp = await sim.get(_events_path(task["task_id"]), headers=auth())
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Request-Id"].startswith("req_")
    stream = await read_stream(resp)
    assert stream.complete
    assert stream.retries == [1000]
    assert stream.ids == [1, 2, 3]
    assert stream.statuses == ["queued", "processing", "succeeded"]
    snapshots = [event["data"] for event in stream.events]
    assert [s["status"] for s in snapshots] == stream.statuses
    assert {s["task_id"] for s in snapshots} == {task["task_id"]}
    assert [s["cost_actual"] for s in snapshots] == [None, None, 0.0504]
    assert snapshots[2]["output"]["images"][1]["url"].endswith("/1.png")
    assert snapshots[0]["updated_at"] < snapshots[1]["updated_at"] < snapshots[2]["updated_at"]


async def test_stream_text_is_standard_sse(sim: SimClient, clock: FakeClock) -> None:
    task = await submit_ok(sim)
    clock.advance(10)
    text = await (await sim.get(_events_path(task["task_id"]), headers=auth())).text()
    assert text.startswith("retry: 1000\n\n")
    blocks = text.split("\n\n")
    assert blocks[-1] == ""
    first = blocks[1].split("\n")
    assert first[0] == "id: 1"
    assert first[1] == "event: queued"
    assert first[2].startswith("data: {")
    assert len(first) == 3


@pytest.mark.parametrize(
    ("last_event_id", "expected"),
    [
        ("2", [3]),
        ("1", [2, 3]),
        ("3", []),
        ("0", [1, 2, 3]),
        ("junk", [1, 2, 3]),
        ("99", [1, 2, 3]),
    ],
)
async def test_last_event_id_resumes_after_it(
    sim: SimClient, clock: FakeClock, last_event_id: str, expected: list[int]
) -> None:
    task = await submit_ok(sim)
    clock.advance(10)
    headers = {**auth(), "Last-Event-ID": last_event_id}
    stream = await read_stream(await sim.get(_events_path(task["task_id"]), headers=headers))
    assert stream.complete
    assert stream.ids == expected


async def test_live_stream_with_keepalives_ends_after_terminal(make_sim: SimFactory) -> None:
    sim = await make_sim(real_clock=True, queued_s=0.1, processing_s=0.2, keepalive_s=0.04)
    task = await submit_ok(sim)
    started = time.monotonic()
    stream = await read_stream(await sim.get(_events_path(task["task_id"]), headers=auth()))
    elapsed = time.monotonic() - started
    assert stream.complete
    assert stream.statuses == ["queued", "processing", "succeeded"]
    assert "keep-alive" in stream.comments
    assert len(stream.comments) >= 3
    assert 0.25 <= elapsed < 1.0


async def test_stream_follows_the_fake_clock(make_sim: SimFactory, clock: FakeClock) -> None:
    sim = await make_sim(keepalive_s=0.02)
    task = await submit_ok(sim)
    resp = await sim.get(_events_path(task["task_id"]), headers=auth())
    seen = await resp.content.readuntil(b"event: queued")
    await asyncio.sleep(0.1)  # several keep-alive periods: nothing may happen on the fake clock
    clock.advance(2)
    seen += await asyncio.wait_for(resp.content.readuntil(b"event: processing"), timeout=1)
    clock.advance(5)
    seen += await asyncio.wait_for(resp.content.read(), timeout=1)
    stream = parse_sse(seen.decode())
    assert stream.statuses == ["queued", "processing", "succeeded"]
    assert stream.comments.count("keep-alive") >= 2


async def test_cancel_wakes_the_stream(make_sim: SimFactory) -> None:
    sim = await make_sim(real_clock=True, queued_s=30, processing_s=30)
    task = await submit_ok(sim)
    resp = await sim.get(_events_path(task["task_id"]), headers=auth())
    await resp.content.readuntil(b"event: queued")
    cancel = await sim.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=auth())
    assert cancel.status == 200
    rest = await asyncio.wait_for(resp.content.read(), timeout=1)
    stream = parse_sse("event: queued" + rest.decode())
    assert stream.statuses == ["queued", "cancelled"]
    assert stream.events[-1]["id"] == "2"
    assert stream.events[-1]["data"]["cost_actual"] == 0.0


async def test_failed_task_stream_carries_the_error(make_sim: SimFactory, clock: FakeClock) -> None:
    sim = await make_sim(failure_rate=1.0)
    task = await submit_ok(sim)
    clock.advance(10)
    stream = await read_stream(await sim.get(_events_path(task["task_id"]), headers=auth()))
    assert stream.statuses == ["queued", "processing", "failed"]
    assert stream.events[-1]["data"]["error"]["code"] == "generation_failed"


async def test_unknown_or_foreign_task_is_404(sim: SimClient) -> None:
    task = await submit_ok(sim)
    for task_id, key in (("task_nope", None), (task["task_id"], OTHER_KEY)):
        resp = await sim.get(_events_path(task_id), headers=auth(key) if key else auth())
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "task_not_found"


async def test_dropped_stream_never_sends_the_terminal_event(
    make_sim: SimFactory, clock: FakeClock
) -> None:
    sim = await make_sim(stream_drop_rate=1.0)
    task = await submit_ok(sim)
    clock.advance(10)
    dropped = await read_stream(await sim.get(_events_path(task["task_id"]), headers=auth()))
    assert not dropped.complete
    assert dropped.statuses == ["queued", "processing"]
    # Resuming after the last event seen: the terminal event is the first one, so it arrives.
    headers = {**auth(), "Last-Event-ID": "2"}
    resumed = await read_stream(await sim.get(_events_path(task["task_id"]), headers=headers))
    assert resumed.complete
    assert resumed.statuses == ["succeeded"]


async def test_live_stream_is_dropped_when_the_terminal_event_is_due(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(real_clock=True, queued_s=0.05, processing_s=0.1, stream_drop_rate=1.0)
    task = await submit_ok(sim)
    stream = await read_stream(await sim.get(_events_path(task["task_id"]), headers=auth()))
    assert not stream.complete
    assert stream.statuses == ["queued", "processing"]
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["streams_open"] == 0


async def test_client_leaving_releases_the_stream(make_sim: SimFactory) -> None:
    sim = await make_sim(keepalive_s=0.02)
    task = await submit_ok(sim)
    resp = await sim.get(_events_path(task["task_id"]), headers=auth())
    await resp.content.readuntil(b"event: queued")
    assert (await (await sim.get("/_sim/stats")).json())["streams_open"] == 1
    resp.close()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if (await (await sim.get("/_sim/stats")).json())["streams_open"] == 0:
            break
    assert (await (await sim.get("/_sim/stats")).json())["streams_open"] == 0
