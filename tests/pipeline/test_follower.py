"""Following a task against MindVideo servers that are not our simulator: liberal SSE framing,
unknown event names, extra fields, wrapped snapshots, no stream at all, and dropped streams."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.pipeline.follower import TaskFollower
from relay.pipeline.mindvideo import MindVideoClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeMindVideo:
    """Counts calls and remembers the Last-Event-ID headers it was sent."""

    events: Handler | None = None
    snapshots: list[dict[str, object]] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)
    gets: int = 0
    streams: int = 0

    def app(self) -> web.Application:
        async def get_task(request: web.Request) -> web.Response:
            self.gets += 1
            snap = self.snapshots[min(self.gets - 1, len(self.snapshots) - 1)]
            return web.json_response(snap)

        async def events(request: web.Request) -> web.StreamResponse:
            self.streams += 1
            self.last_event_ids.append(request.headers.get("Last-Event-ID"))
            if self.events is None:
                return web.json_response({"error": "not found"}, status=404)
            return await self.events(request)

        app = web.Application()
        app.router.add_get("/api/v1/tasks/{id}", get_task)
        app.router.add_get("/api/v1/tasks/{id}/events", events)
        return app


async def _sse(
    request: web.Request, raw: bytes, *, close_early: bool = False
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    await resp.write(raw)
    if close_early:
        assert request.transport is not None
        request.transport.close()
        return resp
    await resp.write_eof()
    return resp


@pytest.fixture
async def make_follower() -> AsyncIterator[Callable[[FakeMindVideo], Awaitable[TaskFollower]]]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(fake: FakeMindVideo) -> TaskFollower:
        server = TestServer(fake.app())
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        metrics = RelayMetrics()
        client = MindVideoClient(
            session,
            base_url=str(server.make_url("")),
            api_key="mv_test_x",
            metrics=metrics,
            backoff=Backoff(0.01, 0.05, random.Random(1)),
            max_attempts=3,
            request_timeout_s=5.0,
        )

        async def no_sleep(_: float) -> None:
            return None

        return TaskFollower(
            client,
            metrics,
            poll_interval_s=0.01,
            stream_idle_timeout_s=5.0,
            task_timeout_s=30.0,
            sleep=no_sleep,
        )

    yield make
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


async def test_liberal_stream_unknown_names_and_non_json_terminal(
    make_follower: Callable[[FakeMindVideo], Awaitable[TaskFollower]],
) -> None:
    raw = (
        b": hello\r\nretry: 500\r\n\r\n"
        b'id: a1\r\nevent: task.update\r\ndata: {"task_id": "t1", "status": "RUNNING",\r\n'
        b'data: "progress": 0.5, "extra": {"x": 1}}\r\n\r\n'
        b"id: a2\r\nevent: completed\r\ndata: done!\r\n\r\n"
    )
    fake = FakeMindVideo(
        events=lambda request: _sse(request, raw),
        snapshots=[{"data": {"id": "t1", "status": "success", "output": {"images": []}}}],
    )
    follower = await make_follower(fake)
    seen: list[str] = []

    async def remember(event_id: str) -> None:
        seen.append(event_id)

    snapshot = await follower.follow("t1", None, remember)
    assert snapshot.status == "succeeded"
    assert snapshot.task_id == "t1"
    assert seen == ["a1", "a2"]
    assert fake.gets == 1, "the non-JSON terminal event is completed by one GET"


async def test_no_stream_at_all_falls_back_to_polling(
    make_follower: Callable[[FakeMindVideo], Awaitable[TaskFollower]],
) -> None:
    running: dict[str, object] = {"task_id": "t2", "status": "processing"}
    done: dict[str, object] = {
        "task_id": "t2",
        "status": "failed",
        "error": {"code": "nsfw", "message": "no"},
    }
    fake = FakeMindVideo(events=None, snapshots=[running] * 20 + [done])

    async def ignore(_: str) -> None:
        return None

    snapshot = await (await make_follower(fake)).follow("t2", None, ignore)
    assert snapshot.status == "failed"
    assert snapshot.error == {"code": "nsfw", "message": "no"}
    assert fake.gets == 21
    assert 3 <= fake.streams <= 6, "the stream is retried after 1, 2, 4, 8 … polls, not each"


async def test_dropped_stream_resumes_from_last_event_id(
    make_follower: Callable[[FakeMindVideo], Awaitable[TaskFollower]],
) -> None:
    first = b'id: 7\nevent: processing\ndata: {"task_id": "t3", "status": "processing"}\n\n'
    last = (
        b'id: 8\nevent: canceled\ndata: {"task_id": "t3", "status": "canceled", '
        b'"cost_actual": 0}\n\n'
    )
    calls = 0

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return await _sse(request, first, close_early=True)
        return await _sse(request, last)

    fake = FakeMindVideo(events=events, snapshots=[{"task_id": "t3", "status": "processing"}])

    async def ignore(_: str) -> None:
        return None

    snapshot = await (await make_follower(fake)).follow("t3", "6", ignore)
    assert snapshot.status == "cancelled"
    assert fake.last_event_ids == ["6", "7"]


async def test_html_instead_of_event_stream_is_not_trusted(
    make_follower: Callable[[FakeMindVideo], Awaitable[TaskFollower]],
) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>login</html>", content_type="text/html")

    snapshots: list[dict[str, object]] = [
        {"task_id": "t4", "status": "queued"},
        {"task_id": "t4", "status": "succeeded"},
    ]
    fake = FakeMindVideo(events=html, snapshots=snapshots)

    async def ignore(_: str) -> None:
        return None

    snapshot = await (await make_follower(fake)).follow("t4", None, ignore)
    assert snapshot.status == "succeeded"
    assert json.loads(json.dumps(snapshot.model_dump()))["task_id"] == "t4"
