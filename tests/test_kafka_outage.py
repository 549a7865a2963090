"""A Kafka outage is visible and never holds a stop (issue 16): a relay on a private noida-db
broker, the broker frozen with SIGSTOP (a hung broker, the hardest case: no connection is refused,
requests just get no answer)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from relay.shutdown import SHUTDOWN_CLOSE_S
from tests.support.pipeline import Pipeline, open_pipeline, relay_metric
from tests.support.services import ManagedProcess, TopicFactory, start_noida

pytestmark = pytest.mark.integration
HEALTH_TIMEOUT_S = 2.0
GRACE_S = 1.0


@pytest_asyncio.fixture(loop_scope="session")
async def private_pipeline(
    tmp_path: Path,
    redis_url: str,
    topics: TopicFactory,
    unique: str,
    simulator: tuple[ManagedProcess, str],
) -> AsyncIterator[tuple[Pipeline, ManagedProcess]]:
    """A broker of this test's own, which it may freeze without harming the others."""
    broker, bootstrap = await start_noida(tmp_path / "broker")
    try:
        async with open_pipeline(
            bootstrap, redis_url, topics, unique, simulator, tmp_path, enable_idempotence=True
        ) as pipe:
            yield pipe, broker
    finally:
        _signal(broker, signal.SIGCONT)
        broker.stop()


def _signal(proc: ManagedProcess, sig: signal.Signals) -> None:
    if proc.is_running():
        os.kill(proc.pid, sig)


async def _ready(pipe: Pipeline, port: int) -> tuple[int, dict[str, str]]:
    status, body = await pipe.relay_get(port, "/readyz")
    checks: dict[str, str] = json.loads(body)["checks"]
    return status, checks


async def _until(pipe: Pipeline, port: int, want: int, within_s: float) -> dict[str, str]:
    deadline = time.monotonic() + within_s
    while True:
        status, checks = await _ready(pipe, port)
        if status == want or time.monotonic() > deadline:
            assert status == want, checks
            return checks
        await asyncio.sleep(0.2)


async def test_frozen_broker_unready_then_ready_and_stop_is_bounded(
    private_pipeline: tuple[Pipeline, ManagedProcess],
) -> None:
    pipe, broker = private_pipeline
    proc, port = await pipe.start_relay(
        RELAY_KAFKA_HEALTH_TIMEOUT_S=str(HEALTH_TIMEOUT_S), RELAY_SHUTDOWN_GRACE_S=str(GRACE_S)
    )
    await _until(pipe, port, 200, 20)
    await pipe.produce([(b"k-outage", b"{}")])
    # The lag gauge is there while Kafka answers (it is measured every 5 s).
    deadline = time.monotonic() + 8
    while "relay_consumer_lag_records{" not in (await pipe.relay_get(port, "/metrics"))[1]:
        assert time.monotonic() < deadline, "no lag gauge while Kafka is up"
        await asyncio.sleep(0.3)

    _signal(broker, signal.SIGSTOP)
    checks = await _until(pipe, port, 503, HEALTH_TIMEOUT_S + 6)
    assert "no successful Kafka round trip" in checks["kafka"]
    assert "RELAY_KAFKA_BOOTSTRAP_SERVERS" in checks["kafka"]
    assert await relay_metric(port, "relay_dependency_up", dependency="kafka") == 0
    metrics = (await pipe.relay_get(port, "/metrics"))[1]
    assert "relay_consumer_lag_records{" not in metrics, "a stale lag must not look current"

    _signal(broker, signal.SIGCONT)
    await _until(pipe, port, 200, HEALTH_TIMEOUT_S + 10)
    assert await relay_metric(port, "relay_dependency_up", dependency="kafka") == 1

    # SIGTERM while the broker is frozen: the final commit and the flush cannot be answered.
    _signal(broker, signal.SIGSTOP)
    await _until(pipe, port, 503, HEALTH_TIMEOUT_S + 6)
    started = time.monotonic()
    code = await asyncio.to_thread(proc.stop, GRACE_S + SHUTDOWN_CLOSE_S + 5)
    took = time.monotonic() - started
    assert code in (0, 4), proc.log_tail()
    assert took <= GRACE_S + SHUTDOWN_CLOSE_S + 1, took


async def test_killed_broker_a_quiet_log_and_a_clean_stop(
    private_pipeline: tuple[Pipeline, ManagedProcess],
) -> None:
    """A dead broker (connections refused): aiokafka's repeated complaints are rate-limited, and
    a SIGTERM stops cleanly although aiokafka's own close fails inside."""
    pipe, broker = private_pipeline
    proc, port = await pipe.start_relay(
        RELAY_KAFKA_HEALTH_TIMEOUT_S=str(HEALTH_TIMEOUT_S), RELAY_SHUTDOWN_GRACE_S=str(GRACE_S)
    )
    await _until(pipe, port, 200, 20)
    broker.kill()
    checks = await _until(pipe, port, 503, HEALTH_TIMEOUT_S + 6)
    assert "no successful Kafka round trip" in checks["kafka"]
    await asyncio.sleep(3)  # aiokafka retries its connections every ~100 ms meanwhile
    code = await asyncio.to_thread(proc.stop, GRACE_S + SHUTDOWN_CLOSE_S + 5)
    log = proc.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    repeated: dict[str, int] = {}
    for line in log.splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if str(entry.get("logger", "")).startswith("aiokafka"):
            repeated[entry["msg"]] = repeated.get(entry["msg"], 0) + 1
    assert repeated, "aiokafka said something"
    assert max(repeated.values()) <= 2, repeated
