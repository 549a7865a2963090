"""The stream budget: with more tasks than stream slots, every task still ends, no more streams
are open at once than allowed, and the rest poll at a pace that does not grow with their number."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.pipeline.follower import TaskFollower
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.pacing import PollPacer, StreamSlots
from relay.sim import SimConfig, build_app
from relay.sim.state import STATE

KEY = "mv_test_budget"


async def test_ten_tasks_two_streams_all_finish() -> None:
    config = SimConfig.model_validate(
        {"api_keys": [KEY], "queued_s": 0, "processing_s": "0.2-0.5", "seed": 3}
    )
    app = build_app(config)
    server = TestServer(app)
    await server.start_server()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
    metrics = RelayMetrics()
    client = MindVideoClient(
        session,
        base_url=str(server.make_url("")),
        api_key=KEY,
        metrics=metrics,
        backoff=Backoff(0.01, 0.05, random.Random(1)),
        max_attempts=3,
        request_timeout_s=5.0,
    )
    follower = TaskFollower(
        client,
        metrics,
        poll_interval_s=0.05,
        stream_idle_timeout_s=5.0,
        task_timeout_s=30.0,
        max_streams=2,
    )
    most_open = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most_open
        while not done.is_set():
            most_open = max(most_open, app[STATE].store.open_streams())
            await asyncio.sleep(0.002)

    async def ignore(_: str) -> None:
        return None

    watcher = asyncio.create_task(watch())
    try:
        tasks = [
            await client.submit(f"budget-{i}", "apimart-doubao-seedance-4-0", {"prompt": "p"})
            for i in range(10)
        ]
        snapshots = await asyncio.wait_for(
            asyncio.gather(*(follower.follow(t.task_id, None, ignore) for t in tasks)), 20
        )
    finally:
        done.set()
        await watcher
        await session.close()
        await server.close()
    assert [s.status for s in snapshots] == ["succeeded"] * 10
    assert 1 <= most_open <= 2, f"{most_open} streams were open at once"
    assert follower.streams.in_use == 0, "every slot was given back"
    requests = app[STATE].stats
    assert requests.count("GET /api/v1/tasks/{task_id}/events") >= 2
    assert requests.count("GET /api/v1/tasks/{task_id}") >= 1, "tasks without a slot polled"


async def test_a_freed_slot_goes_to_the_longest_waiting() -> None:
    slots = StreamSlots(1)
    assert await slots.take(0)
    first = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    second = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    assert not slots.try_take(), "a waiter is ahead of a newcomer"
    slots.give_back()
    assert await first
    assert not second.done()
    slots.give_back()
    assert await second
    slots.give_back()
    assert slots.in_use == 0


async def test_waiting_for_a_slot_times_out_without_leaking_it() -> None:
    slots = StreamSlots(1)
    assert await slots.take(0)
    assert not await slots.take(0.01)
    waiter = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.give_back()
    assert slots.in_use == 0
    assert slots.waiting == 0
    assert slots.try_take()


async def test_polls_space_out_as_pollers_grow() -> None:
    slept: list[float] = []
    now = 100.0

    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)

    pacer = PollPacer(2.0, 100.0, clock=lambda: now, sleep=sleep, rng=random.Random(1))
    pacer.pollers = 10
    assert 1.8 <= pacer.interval_s() <= 2.2, "few pollers: the configured interval"
    pacer.pollers = 10_000
    assert 90 <= pacer.interval_s() <= 110, "10,000 pollers at 100/s: each every ~100 s"
    for _ in range(5):
        await pacer.turn()
    assert slept == pytest.approx([0.01, 0.02, 0.03, 0.04]), "polls are 1/rate apart"


async def test_streams_can_have_a_pool_of_their_own() -> None:
    config = SimConfig.model_validate(
        {"api_keys": [KEY], "queued_s": 0, "processing_s": "0.1-0.2", "seed": 4}
    )
    server = TestServer(build_app(config))
    await server.start_server()
    paths: dict[str, list[str]] = {"requests": [], "streams": []}

    def counting(kind: str) -> aiohttp.TraceConfig:
        async def on_start(
            _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestStartParams
        ) -> None:
            paths[kind].append(params.url.path)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        return trace

    requests = aiohttp.ClientSession(trace_configs=[counting("requests")])
    streams = aiohttp.ClientSession(trace_configs=[counting("streams")])
    metrics = RelayMetrics()
    client = MindVideoClient(
        requests,
        base_url=str(server.make_url("")),
        api_key=KEY,
        metrics=metrics,
        backoff=Backoff(0.01, 0.05, random.Random(1)),
        max_attempts=3,
        request_timeout_s=5.0,
        stream_session=streams,
    )
    follower = TaskFollower(
        client, metrics, poll_interval_s=0.05, stream_idle_timeout_s=5.0, task_timeout_s=10.0
    )

    async def ignore(_: str) -> None:
        return None

    try:
        task = await client.submit("own-pool", "apimart-doubao-seedance-4-0", {"prompt": "p"})
        snapshot = await asyncio.wait_for(follower.follow(task.task_id, None, ignore), 10)
    finally:
        await requests.close()
        await streams.close()
        await server.close()
    assert snapshot.status == "succeeded"
    assert paths["requests"] == ["/api/v1/tasks"], "submits (and polls) use the request pool"
    assert paths["streams"] == [f"/api/v1/tasks/{task.task_id}/events"]
