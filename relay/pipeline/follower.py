"""Follow one MindVideo task to its terminal status: event stream first, polling as fallback.

The stream is resumed with ``Last-Event-ID`` after a break. When it is unavailable (no such
endpoint, wrong content type, connection failures) the follower polls ``GET /tasks/{id}`` and tries
the stream again after 1, 2, 4 … 32 polls, so a MindVideo without streams costs one extra request
per 32 polls and a flaky stream is back in use within seconds.

At most ``max_streams`` tasks hold a stream at once (each holds a pooled connection for as long as
its task runs); the others poll, paced by ``relay.pipeline.pacing.PollPacer``, and take a stream
as soon as one frees up. So 10,000 tasks in flight cost a bounded number of connections and polls
a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from relay.exceptions import FollowTimeout, StreamUnavailable
from relay.metrics import RelayMetrics
from relay.models import TERMINAL_STATUSES, TaskSnapshot, normalize_status
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.pacing import PollPacer, StreamSlots
from relay.pipeline.sse import ServerSentEvent

log = logging.getLogger(__name__)

MAX_STREAM_RETRY_EVERY_POLLS = 32
# When streams share the request pool (no stream session given to the client): 3/4 of 200.
DEFAULT_MAX_STREAMS = 150
DEFAULT_MAX_POLLS_PER_S = 100.0
OnEventId = Callable[[str], Awaitable[None]]

__all__ = ["FollowTimeout", "TaskFollower"]


class TaskFollower:
    """Turns a task id into its terminal snapshot, reporting each event id as it goes."""

    def __init__(
        self,
        client: MindVideoClient,
        metrics: RelayMetrics,
        *,
        poll_interval_s: float,
        stream_idle_timeout_s: float,
        task_timeout_s: float,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_polls_per_s: float = DEFAULT_MAX_POLLS_PER_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._idle_timeout_s = stream_idle_timeout_s
        self._task_timeout_s = task_timeout_s
        self._clock = clock
        self._sleep = sleep
        self.streams = StreamSlots(max_streams)
        self._pacer = PollPacer(poll_interval_s, max_polls_per_s, clock=clock, sleep=sleep)
        self._following = 0

    async def follow(
        self,
        task_id: str,
        last_event_id: str | None,
        on_event_id: OnEventId,
        *,
        timeout_s: float | None = None,
    ) -> TaskSnapshot:
        """The task's terminal snapshot. Raises ``FollowTimeout`` once ``timeout_s`` (the time
        left of ``RELAY_TASK_TIMEOUT_S`` since the submit; all of it when ``None``) has passed
        without one; a task whose time is already up is looked at once before that."""
        self._following += 1
        try:
            timeout = self._task_timeout_s if timeout_s is None else max(0.0, timeout_s)
            return await self._follow(task_id, last_event_id, on_event_id, timeout)
        finally:
            self._following -= 1

    async def _follow(
        self, task_id: str, last_event_id: str | None, on_event_id: OnEventId, timeout_s: float
    ) -> TaskSnapshot:
        deadline = self._clock() + timeout_s
        cursor = _Cursor(last_event_id)
        stream_failures = 0
        polls_until_stream = 0
        slot_wait_s = self._poll_wait_s(deadline)
        while True:
            if (
                polls_until_stream <= 0
                and self._clock() < deadline
                and await self.streams.take(slot_wait_s)
            ):
                cursor.received = False
                try:
                    # A stream is read no longer than the task's time left; then one last look.
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        snapshot = await self._from_stream(task_id, cursor, on_event_id)
                    if snapshot is not None:
                        return snapshot
                    stream_failures = 0
                except TimeoutError:
                    log.info("task time is up while streaming", extra={"task_id": task_id})
                except StreamUnavailable as exc:
                    if cursor.received:
                        # It worked, then broke: check once by GET, then resume at once.
                        stream_failures = 0
                    else:
                        stream_failures += 1
                        polls_until_stream = min(
                            2 ** (stream_failures - 1), MAX_STREAM_RETRY_EVERY_POLLS
                        )
                        self._metrics.stream_fallbacks.inc()
                    log.info(
                        "event stream broke or is unavailable",
                        extra={"task_id": task_id, "reason": str(exc), "failures": stream_failures},
                    )
                finally:
                    self.streams.give_back()
            await self._pacer.turn()
            snapshot = await self._client.get_task(task_id)
            if snapshot.terminal:
                return snapshot
            if self._clock() >= deadline:
                raise FollowTimeout(
                    f"task {task_id} not terminal within {self._task_timeout_s:g}s of its submit"
                )
            if polls_until_stream > 0:
                polls_until_stream -= 1
                await self._sleep(self._poll_wait_s(deadline))
                slot_wait_s = 0.0
            else:
                # No stream slot, or the stream just ended: wait for a slot up to the next poll.
                slot_wait_s = self._poll_wait_s(deadline)

    def _poll_wait_s(self, deadline: float) -> float:
        self._pacer.pollers = max(0, self._following - self.streams.in_use)
        return max(0.0, min(self._pacer.interval_s(), deadline - self._clock()))

    async def _from_stream(
        self, task_id: str, cursor: _Cursor, on_event_id: OnEventId
    ) -> TaskSnapshot | None:
        """Read the stream until it closes; the terminal snapshot if it came.

        ``cursor`` keeps the last event id even when the stream breaks, so the next connection
        resumes after it. A stream that closes without a single event counts as unavailable, so
        a server that hangs up at once is not reconnected to in a tight loop.
        """
        async for event in self._client.events(task_id, cursor.last_event_id, self._idle_timeout_s):
            cursor.received = True
            if event.last_event_id is not None and event.last_event_id != cursor.last_event_id:
                cursor.last_event_id = event.last_event_id
                await on_event_id(event.last_event_id)
            data = _event_json(event)
            status = _event_status(event, data)
            if status in TERMINAL_STATUSES:
                snapshot = _event_snapshot(data, task_id)
                if snapshot is None or snapshot.status != status:
                    snapshot = await self._client.get_task(task_id)
                if snapshot.terminal:
                    return snapshot
        if not cursor.received:
            raise StreamUnavailable("event stream closed without an event")
        return None


@dataclass
class _Cursor:
    last_event_id: str | None
    received: bool = False


def _event_status(event: ServerSentEvent, data: dict[str, object] | None) -> str:
    """The status an event reports: its data's ``status``, else its event name."""
    if data is not None and "status" in data:
        return normalize_status(data["status"])
    return normalize_status(event.event)


def _event_json(event: ServerSentEvent) -> dict[str, object] | None:
    try:
        data = json.loads(event.data)
    except ValueError:
        return None
    if isinstance(data, dict):
        inner = data.get("data") or data.get("task")
        if "status" not in data and isinstance(inner, dict):
            return inner
        return data
    return None


def _event_snapshot(data: dict[str, object] | None, task_id: str) -> TaskSnapshot | None:
    if data is None:
        return None
    try:
        return TaskSnapshot.model_validate({"task_id": task_id, **data})
    except ValidationError:
        return None
