"""Event-loop lag (issue 15): a loop held by a blocking call shows up in
``relay_event_loop_lag_seconds``, an idle loop does not, and stopping leaves nothing running."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.loopmonitor import LoopLagMonitor
from relay.metrics import RelayMetrics

BLOCK_S = 0.3
INTERVAL_S = 0.01


def _sample(metrics: RelayMetrics, suffix: str, le: str | None = None) -> float:
    labels = {"le": le} if le is not None else {}
    value = metrics.registry.get_sample_value(f"relay_event_loop_lag_seconds{suffix}", labels)
    assert value is not None
    return value


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    metrics = RelayMetrics()
    monitor = LoopLagMonitor(metrics.event_loop_lag, interval_s=INTERVAL_S)
    monitor.start()
    await asyncio.sleep(INTERVAL_S * 5)
    # A callback that holds the loop, as a slow synchronous call in the relay would.
    asyncio.get_running_loop().call_soon(time.sleep, BLOCK_S)
    await asyncio.sleep(INTERVAL_S * 5)
    await monitor.stop()
    count = _sample(metrics, "_count")
    assert count >= 3
    # The wake-up that waited behind the blocking call was late by about BLOCK_S - INTERVAL_S.
    assert _sample(metrics, "_bucket", "0.25") < count
    assert _sample(metrics, "_sum") >= BLOCK_S - 2 * INTERVAL_S
    assert "relay_event_loop_lag_seconds_bucket" in metrics.render().decode()


async def test_stop_ends_the_timer_and_start_is_idempotent() -> None:
    metrics = RelayMetrics()
    monitor = LoopLagMonitor(metrics.event_loop_lag, interval_s=INTERVAL_S)
    await monitor.stop()  # never started: nothing to do
    monitor.start()
    monitor.start()
    await asyncio.sleep(INTERVAL_S * 3)
    await monitor.stop()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "loop-lag-monitor" not in names
    stopped_at = _sample(metrics, "_count")
    await asyncio.sleep(INTERVAL_S * 3)
    assert _sample(metrics, "_count") == stopped_at


async def test_lag_is_measured_on_the_injected_clock() -> None:
    metrics = RelayMetrics()
    now = [100.0]

    def clock() -> float:
        now[0] += 0.75  # each reading is 0.75 s after the one before
        return now[0]

    # Every wake-up reads 0.75 s after the timer was set for 1 ms: 0.749 s late each time.
    monitor = LoopLagMonitor(metrics.event_loop_lag, interval_s=0.001, clock=clock)
    monitor.start()
    for _ in range(200):
        if _sample(metrics, "_count") >= 2:
            break
        await asyncio.sleep(0.005)
    await monitor.stop()
    count = _sample(metrics, "_count")
    assert _sample(metrics, "_sum") / count == pytest.approx(0.749)
    assert _sample(metrics, "_bucket", "0.5") == 0
    assert _sample(metrics, "_bucket", "1.0") == count
