"""Work in flight stays within its bounds, full partitions pause and resume, nothing is lost."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.pipeline import Pipeline

MODEL = "apimart-doubao-seedance-4-0"


@pytest.fixture
def sim_args() -> list[str]:
    return ["--queued-s", "0.1", "--processing-s", "0.4-0.8", "--failure-rate", "0"]


async def test_in_flight_bounds_hold_and_paused_partitions_resume(
    pipeline: Pipeline, unique: str
) -> None:
    keys = [f"bp-{unique[:8]}-{i:03d}" for i in range(80)]
    _, port = await pipeline.start_relay(
        RELAY_MAX_IN_FLIGHT_PER_PARTITION="3", RELAY_MAX_IN_FLIGHT="8"
    )
    await pipeline.produce(
        [(k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}}).encode()) for k in keys]
    )
    samples: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            samples.append(
                (
                    await pipeline.metric(port, "relay_tasks_in_flight"),
                    await pipeline.metric(port, "relay_partitions_paused"),
                )
            )
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        results = await pipeline.results(set(keys), 120.0)
    finally:
        sampler.cancel()
    assert sorted(r.key for r in results) == sorted(keys)
    assert max(s[0] for s in samples) <= 8, "never more than RELAY_MAX_IN_FLIGHT at once"
    assert max(s[0] for s in samples) >= 6, "the bound was actually reached"
    assert max(s[1] for s in samples) >= 1, "full partitions were paused"
    assert (await pipeline.sim_get("/_sim/ledger"))["count"] == len(keys)
    print(
        f"\nbackpressure: max in flight {max(s[0] for s in samples):.0f} (bound 8), "
        f"max paused partitions {max(s[1] for s in samples):.0f}"
    )
