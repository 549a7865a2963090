"""Webhooks end to end on real processes: every published result reaches its endpoint once per
webhook-id, signed so that the standardwebhooks package verifies it; private destinations are
refused without a connection; dead-lettered deliveries can be replayed."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import (
    MODEL,
    metric,
    percentile,
    read_topic,
    request,
    verified,
    webhook_dlq,
    webhook_env,
)

TIMEOUT_S = 20.0


async def test_results_arrive_signed_once_per_webhook_id(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    own, default = Receiver(), Receiver()
    await own.start()
    await default.start()
    dlq = await webhook_dlq(pipeline, topics)
    try:
        _, port = await pipeline.start_relay(
            **webhook_env(dlq, RELAY_WEBHOOK_DEFAULT_URL=default.url)
        )
        keys = [f"hook-{unique[:8]}-{i}" for i in range(24)]
        records = [request(k, own.url if i % 2 else None) for i, k in enumerate(keys)]
        bad = f"bad-{unique[:8]}"
        records.append(
            (
                bad.encode(),
                json.dumps(
                    {
                        "model": MODEL,
                        "input": {"n": 99},
                        "webhook_url": own.url,
                        "idempotency_key": bad,
                    }
                ).encode(),
            )
        )
        await pipeline.produce(records)
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 25, TIMEOUT_S)
        assert len(results) == 25
        assert await own.wait_for(lambda: len(own.by_id()) == 13, TIMEOUT_S)
        assert await default.wait_for(lambda: len(default.by_id()) == 12, TIMEOUT_S)
        await asyncio.sleep(0.5)  # anything extra would arrive now

        latencies: list[float] = []
        for record in results:
            value = json.loads(record.value)
            event_id = value["event_id"]
            receiver = own if record.key == bad or keys.index(record.key) % 2 else default
            other = default if receiver is own else own
            arrived = receiver.by_id().get(event_id, [])
            assert len(arrived) == 1, f"{record.key}: {len(arrived)} deliveries"
            assert event_id not in other.by_id()
            delivery = arrived[0]
            assert delivery.body == record.value, "the body is the result exactly as published"
            assert verified(delivery) == value
            assert delivery.headers["Content-Type"] == "application/json"
            assert delivery.headers["User-Agent"].startswith("mindvideo-relay/")
            latencies.append(delivery.received_at - record.timestamp_ms / 1000)
        rejected = next(json.loads(r.value) for r in results if r.key == bad)
        assert rejected["type"] == "request.rejected"
        assert rejected["event_id"] in own.by_id(), "rejections go to the request's webhook too"
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"\nwebhook delivery latency (published -> received): p50={p50 * 1000:.0f}ms "
            f"p99={p99 * 1000:.0f}ms max={max(latencies) * 1000:.0f}ms over {len(latencies)}"
        )
        assert p99 < 2.0

        assert await metric(port, "relay_webhook_deliveries_total", outcome="delivered") == 25
        assert await metric(port, "relay_webhook_attempts_total", outcome="success") == 25
        assert await metric(port, "relay_webhook_delivery_latency_seconds_count") == 25
        assert await metric(port, "relay_webhook_dead_lettered_total") == 0
    finally:
        await own.stop()
        await default.stop()


async def test_private_destination_is_refused_and_dead_lettered(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    dlq = await webhook_dlq(pipeline, topics)
    _, port = await pipeline.start_relay(**webhook_env(dlq))
    private, none = f"ssrf-{unique[:8]}", f"none-{unique[:8]}"
    await pipeline.produce([request(private, "http://10.0.0.1/hook"), request(none)])
    letters = await read_topic(pipeline.bootstrap, dlq, 1, TIMEOUT_S)
    assert [letter.key for letter in letters] == [private]
    headers = letters[0].headers
    assert headers["webhook-reason"] == b"refused"
    assert headers["webhook-endpoint"] == b"http://10.0.0.1/hook"
    assert b"private" in headers["webhook-last-error"]
    assert headers["webhook-attempts"] == b"1"
    results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 2, TIMEOUT_S)
    assert letters[0].value == next(r.value for r in results if r.key == private)

    for _ in range(50):
        if await metric(port, "relay_webhook_deliveries_total", outcome="no_endpoint") == 1:
            break
        await asyncio.sleep(0.1)
    assert await metric(port, "relay_webhook_deliveries_total", outcome="no_endpoint") == 1
    assert await metric(port, "relay_webhook_attempts_total", outcome="refused") == 1
    assert await metric(port, "relay_webhook_dead_lettered_total") == 1
    assert await metric(port, "relay_webhook_deliveries_total", outcome="dead_lettered") == 1
    # Refused before connecting: no connection was ever tried, so none could fail or time out.
    assert await metric(port, "relay_webhook_attempts_total", outcome="connection_error") == 0
    assert await metric(port, "relay_webhook_attempts_total", outcome="timeout") == 0


async def _replay(pipeline: Pipeline, env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "webhooks",
        "replay",
        *args,
        env=pipeline.relay_env(**env),
        cwd=pipeline.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_dead_lettered_deliveries_are_replayed(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()  # not started yet: every attempt is refused at the TCP level
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=receiver.url,
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,0.2,0.3",
        # An open breaker defers deliveries without using attempts; here they should run out.
        RELAY_WEBHOOK_BREAKER_MIN_REQUESTS="1000",
    )
    _, port = await pipeline.start_relay(**env)
    keys = [f"replay-{unique[:8]}-{i}" for i in range(5)]
    await pipeline.produce([request(k) for k in keys])
    letters = await read_topic(pipeline.bootstrap, dlq, 5, TIMEOUT_S)
    assert sorted(letter.key for letter in letters) == sorted(keys)
    assert all(letter.headers["webhook-reason"] == b"exhausted" for letter in letters)
    assert all(letter.headers["webhook-attempts"] == b"3" for letter in letters)
    assert await metric(port, "relay_webhook_attempts_total", outcome="connection_error") == 15
    assert await metric(port, "relay_webhook_dead_lettered_total") == 5

    await receiver.start()
    try:
        out = await _replay(pipeline, env, "--endpoint", "http://127.0.0.1:1/elsewhere")
        assert "matched=0" in out
        assert "scheduled=0" in out
        out = await _replay(pipeline, env, "--all")
        assert "read=5 matched=5 scheduled=5" in out, out
        assert await receiver.wait_for(lambda: len(receiver.by_id()) == 5, TIMEOUT_S)
        by_key: dict[str, Any] = {}
        for arrived in receiver.by_id().values():
            by_key[json.loads(arrived[0].body)["idempotency_key"]] = arrived
        for letter in letters:
            assert len(by_key[letter.key]) == 1
            assert by_key[letter.key][0].body == letter.value
            verified(by_key[letter.key][0])
    finally:
        await receiver.stop()
