"""``GET /api/v1/tasks/{task_id}/events``: the task's status changes as Server-Sent Events.

The stream starts with ``retry: 1000``, replays every change so far (or only those after
``Last-Event-ID``), then sleeps until the next planned change, a cancel, or the keep-alive
deadline, whichever comes first. Each change is one event: ``id: <seq>``, ``event: <status>``,
``data: <snapshot JSON>``. The response ends after the terminal event, or at once without one when
the task is forgotten (``POST /_sim/forget``). A stream chosen for a drop is closed without its
final chunk just before it would send the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from relay.sim.api import find_task
from relay.sim.state import STATE, SimState
from relay.sim.tasks import Task, TaskEvent

SSE_RETRY_MS = 1000
KEEPALIVE_COMMENT = b": keep-alive\n\n"

log = logging.getLogger(__name__)


def format_event(event: TaskEvent, data_json: str) -> bytes:
    """One SSE event; the JSON has no raw newlines, so one ``data:`` line suffices."""
    return f"id: {event.seq}\nevent: {event.status}\ndata: {data_json}\n\n".encode()


def last_event_id(request: web.Request) -> int:
    """The ``Last-Event-ID`` to resume after; anything unparsable means "from the start"."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() else 0


async def stream_task_events(request: web.Request) -> web.StreamResponse:
    """Follow one task until its terminal event (or until the client leaves)."""
    state = request.app[STATE]
    task = find_task(request)
    after = last_event_id(request)
    if after > task.current(state.now()).seq:
        after = 0  # an id this task never sent: replay everything rather than wait forever
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    stream = _EventStream(state, request, response, task, drop=state.faults.draw_stream_drop())
    wake = state.store.listen(task.task_id)
    try:
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        await stream.follow(after, wake)
    except ConnectionResetError:
        log.debug("events client of %s went away", task.task_id)
    finally:
        state.store.unlisten(task.task_id, wake)
    return response


class _EventStream:
    def __init__(
        self,
        state: SimState,
        request: web.Request,
        response: web.StreamResponse,
        task: Task,
        *,
        drop: bool,
    ) -> None:
        self._state = state
        self._request = request
        self._response = response
        self._task = task
        self._drop = drop
        self._base_url = state.base_url(request)
        self._loop = asyncio.get_running_loop()
        self._last_write_s = self._loop.time()

    async def follow(self, after: int, wake: asyncio.Event) -> None:
        keepalive_s = self._state.config.keepalive_s
        sent = 0
        while True:
            if not self._state.store.knows(self._task):
                await self._response.write_eof()
                return
            now_s = self._state.now()
            for event in self._task.events(now_s):
                if event.seq <= after:
                    continue
                if event.terminal and self._drop and sent > 0:
                    self._cut()
                    return
                await self._write(format_event(event, self._snapshot_json(event)))
                sent += 1
                after = event.seq
            current = self._task.current(now_s)
            if current.terminal and after >= current.seq:
                await self._response.write_eof()
                return
            wake.clear()
            wait_s = keepalive_s - (self._loop.time() - self._last_write_s)
            next_change_s = self._task.next_change_at(now_s)
            if next_change_s is not None:
                wait_s = min(wait_s, next_change_s - now_s)
            # A timeout means the planned change or the keep-alive is due: loop round to see.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(wait_s, 0.0))
            if self._loop.time() - self._last_write_s >= keepalive_s:
                await self._write(KEEPALIVE_COMMENT)

    def _snapshot_json(self, event: TaskEvent) -> str:
        return self._task.snapshot(event, self._base_url).model_dump_json()

    async def _write(self, data: bytes) -> None:
        await self._response.write(data)
        self._last_write_s = self._loop.time()

    def _cut(self) -> None:
        """Drop the connection without the final chunk, as a broken network would."""
        log.info("dropping events stream of %s before its terminal event", self._task.task_id)
        self._response.force_close()
        transport = self._request.transport
        if transport is not None:
            transport.close()
