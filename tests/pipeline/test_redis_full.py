"""A Redis at ``maxmemory`` (``noeviction``) refuses the write that records a submit: the submit
is paid at MindVideo, so only the write is retried, never the submit (issue 17, an attack by a
flaky dependency). A private redis-server with a small ``maxmemory`` is filled for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from relay.devtools.embedded import redis_server_binary
from relay.pipeline.idempotency import IdempotencyStore, KeyState
from tests.pipeline.fakes import FakeStore, Harness, request, source
from tests.support.services import ManagedProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration

MAXMEMORY_BYTES = 4 * 1024 * 1024
FILLER_BYTES = 64 * 1024
SMALL_FILLER_BYTES = 256
START_TIMEOUT_S = 10.0


@pytest_asyncio.fixture(loop_scope="session")
async def small_redis(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    port = free_port()
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--maxmemory", str(MAXMEMORY_BYTES), "--maxmemory-policy", "noeviction"]
    proc = ManagedProcess(f"redis-full-{port}", argv, tmp_path)
    proc.start()
    try:
        await wait_for_port("127.0.0.1", port, START_TIMEOUT_S, proc)
        client = aioredis.Redis(port=port)
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        proc.stop()


async def _fill(redis: aioredis.Redis) -> int:
    """Write until Redis refuses with OOM; how many filler keys it took. Small values last, so
    the stored data itself (not a large command's transient buffer) is over ``maxmemory``."""
    n = 0
    for size in (FILLER_BYTES, SMALL_FILLER_BYTES):
        while True:
            try:
                await redis.set(f"filler:{n}", b"x" * size)
            except OutOfMemoryError:
                break
            n += 1
    return n


class _FullThenFreed(Harness):
    """Frees Redis after the lifecycle's third backoff: three refused writes, then room."""

    redis: aioredis.Redis | None = None

    async def _sleep(self, delay_s: float) -> None:
        await super()._sleep(delay_s)
        if len(self.sleeps) == 3 and self.redis is not None:
            await self.redis.flushdb()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_full_redis_retries_the_write_not_the_paid_submit(
    small_redis: aioredis.Redis,
) -> None:
    store = IdempotencyStore(small_redis, prefix="full", retention_s=600)
    # The harness's steps take any IdempotencyStore; the fake's type is only its default.
    h = _FullThenFreed(store=cast(FakeStore, store))
    h.redis = small_redis
    filled: list[int] = []

    async def fill() -> None:
        filled.append(await _fill(small_redis))

    # The claim is written, then Redis fills up while MindVideo creates the task.
    original_submit = h.client.submit

    async def submit_then_fill(*args: object, **kwargs: object) -> object:
        answer = await original_submit(*args, **kwargs)  # type: ignore[arg-type]
        await fill()
        return answer

    h.client.submit = submit_then_fill  # type: ignore[assignment, method-assign]
    await h.processor.process(source("oom-1", request("oom-1")))

    assert filled[-1] > 0, "Redis was really full"
    assert h.client.submits == ["oom-1"], "the task was submitted once, whatever Redis refused"
    assert len(h.sleeps) >= 3
    assert h.metric("relay_retries_total", scope="lifecycle", reason="redis") >= 3
    assert [r.type for r, *_ in h.publisher.results] == ["task.succeeded"]
    record = await store.get("oom-1")
    assert record is not None
    assert record.state == KeyState.PUBLISHED
    assert h.metric("relay_tasks_submitted_total", model="apimart-doubao-seedance-4-0") == 1
