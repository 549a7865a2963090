"""Redis calls sent in batches: one pipeline per batch, at most ``MAX_BATCHES_IN_FLIGHT`` at once.

Thousands of requests in flight each make a handful of idempotency-store calls. They are not sent
one by one: the calls made while a batch is on its way are sent together as the next pipeline, so
the store holds two connections and pays one round trip per batch, however many requests run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from relay.redis import RedisClient, pipeline

log = logging.getLogger(__name__)

MAX_BATCHES_IN_FLIGHT = 2
MAX_BATCH_CALLS = 1000

AddToPipeline = Callable[[Pipeline], Any]


class RedisBatcher:
    """Sends the calls queued while earlier batches are in flight as one pipeline each."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._queue: list[tuple[AddToPipeline, asyncio.Future[Any] | None]] = []
        self._in_flight = 0

    async def call(self, add: AddToPipeline) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(add, future)
        return await future

    def call_behind(self, add: AddToPipeline) -> None:
        """Queue a call nobody waits for (a failure is logged)."""
        self._enqueue(add, None)

    def _enqueue(self, add: AddToPipeline, future: asyncio.Future[Any] | None) -> None:
        self._queue.append((add, future))
        if self._in_flight < MAX_BATCHES_IN_FLIGHT:
            self._in_flight += 1
            asyncio.get_running_loop().call_soon(self._start_batch)

    def _start_batch(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH_CALLS], self._queue[MAX_BATCH_CALLS:]
        if not batch:
            self._in_flight -= 1
            return
        task = asyncio.create_task(self._send(batch), name="idempotency-store-batch")
        task.add_done_callback(self._batch_done)

    def _batch_done(self, _: asyncio.Task[None]) -> None:
        if self._queue:
            self._start_batch()
        else:
            self._in_flight -= 1

    async def _send(self, batch: list[tuple[AddToPipeline, asyncio.Future[Any] | None]]) -> None:
        try:
            async with pipeline(self._redis) as pipe:
                for add, _ in batch:
                    queued = add(pipe)  # a script call is a coroutine; a command is queued at once
                    if inspect.isawaitable(queued):
                        await queued
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            replies = [exc] * len(batch)
        except BaseException as exc:
            # Cancelled or worse: fail the waiters (never leave them hanging), then go on raising.
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(RedisError(f"batch not sent: {exc!r}"))
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None:
                if isinstance(reply, Exception):
                    log.warning("a write-behind Redis call failed", extra={"reason": repr(reply)})
            elif future.done():
                continue  # the caller was cancelled; the call was made all the same
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
