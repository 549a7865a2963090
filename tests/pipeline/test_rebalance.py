"""Two relays share a group; one is stopped mid-run and the other finishes its tasks without a
second submit (issue #3).

Runs on Tansu. On noida-db about one run in six hung: after the stopped member left the group,
the remaining member's rejoin was never answered (no assignment for minutes, whatever the
rebalance timeout), the same broker flaw that keeps killed members in its groups forever.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from tests.support.pipeline import Pipeline

MODEL = "apimart-doubao-seedance-4-0"
REQUESTS = 120


@pytest.fixture
def sim_args() -> list[str]:
    return ["--queued-s", "0.3", "--processing-s", "2-4", "--failure-rate", "0"]


async def test_stopped_relay_hands_its_tasks_to_the_other(
    tansu_pipeline: Pipeline, unique: str
) -> None:
    pipeline = tansu_pipeline
    keys = [f"rebal-{unique[:8]}-{i:03d}" for i in range(REQUESTS)]
    first, first_port = await pipeline.start_relay(RELAY_SHUTDOWN_GRACE_S="0.2")
    _, second_port = await pipeline.start_relay()
    await pipeline.produce(
        [(k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}}).encode()) for k in keys]
    )
    # Wait until both are working, then stop the first while its tasks are mid-flight.
    for _ in range(100):
        if await pipeline.metric(first_port, "relay_tasks_in_flight") > 0 and (
            await pipeline.metric(second_port, "relay_tasks_in_flight") > 0
        ):
            break
        await asyncio.sleep(0.1)
    in_flight = await pipeline.metric(first_port, "relay_tasks_in_flight")
    assert in_flight > 0, "the first relay owned some partitions"
    assert first.stop() == 0, "SIGTERM exits 0"

    results = await pipeline.results(set(keys), 90.0)
    assert sorted(r.key for r in results) == sorted(keys), "one result per request"
    resumed = await pipeline.metric(second_port, "relay_dedupe_hits_total", outcome="resumed")
    assert resumed > 0, "the second relay resumed tasks the first had submitted"
    assert resumed < REQUESTS, "its own tasks kept running through the rebalance"

    ledger = await pipeline.sim_get("/_sim/ledger")
    assert Counter(c["idempotency_key"] for c in ledger["charges"]) == Counter(keys)
    stats = await pipeline.sim_get("/_sim/stats")
    submits = stats["requests"]["POST /api/v1/tasks"]
    assert submits == {"200": REQUESTS}, f"exactly one submit per request, saw {submits}"
    print(
        f"\nrebalance: first relay stopped with {in_flight:.0f} in flight; "
        f"second resumed {resumed:.0f} without submitting again"
    )
