"""A full Redis (maxmemory reached, noeviction) makes the relay not ready, with the reason on
/readyz and the status page (issue 16): it still answers PING, but refuses every write."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.pipeline import Pipeline
from tests.support.services import start_redis


async def _redis_check(pipeline: Pipeline, port: int, want_status: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        status, body = await pipeline.relay_get(port, "/readyz")
        if status == want_status or time.monotonic() > deadline:
            assert status == want_status, body
            check: str = json.loads(body)["checks"]["redis"]
            return check
        await asyncio.sleep(0.2)


async def test_a_full_redis_is_not_ready_and_says_why(pipeline: Pipeline, tmp_path: Path) -> None:
    proc, url = await start_redis(tmp_path / "full-redis")
    client = aioredis.Redis.from_url(url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        _, port = await pipeline.start_relay(RELAY_REDIS_URL=url)
        assert await _redis_check(pipeline, port, 200) == "ok"
        await client.config_set("maxmemory", "1")  # below what it uses: every write refused
        assert await client.ping()
        check = await _redis_check(pipeline, port, 503)
        assert "OOM" in check
        assert "maxmemory" in check
        status, body = await pipeline.relay_get(port, "/status.json")
        assert status == 200
        assert "OOM" in json.loads(body)["checks"]["redis"]
        await client.config_set("maxmemory", "0")
        assert await _redis_check(pipeline, port, 200) == "ok"
    finally:
        await client.aclose()
        proc.stop()
