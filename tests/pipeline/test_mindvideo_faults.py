"""A flaky MindVideo (429s, 5xx, dropped event streams, no stream at all) loses nothing and
charges nothing twice."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.support.pipeline import Pipeline

MODEL = "apimart-doubao-seedance-4-0"


@pytest.fixture
def sim_args() -> list[str]:
    return (
        "--queued-s 0.1 --processing-s 0.2-1.5 --failure-rate 0.2 --rate-429 0.1"
        " --retry-after-s 1 --rate-5xx 0.15 --stream-drop-rate 0.4"
    ).split()


async def test_flaky_mindvideo_loses_nothing_and_charges_once(
    pipeline: Pipeline, unique: str
) -> None:
    keys = [f"flaky-{unique[:8]}-{i}" for i in range(60)]
    await pipeline.start_relay()
    await pipeline.produce(
        [(k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}}).encode()) for k in keys]
    )
    results = await pipeline.results(set(keys), 90.0)
    assert sorted(r.key for r in results) == sorted(keys), "one result per request"
    statuses = Counter(r.value["status"] for r in results)
    assert set(statuses) <= {"succeeded", "failed"}
    assert statuses["failed"] > 0, "the simulator's 20% failure rate shows up as task.failed"
    for r in results:
        if r.value["status"] == "failed":
            assert r.value["error"]["code"] == "generation_failed"
            assert r.value["cost_actual"] == 0.0
    ledger = await pipeline.sim_get("/_sim/ledger")
    per_key = Counter(c["idempotency_key"] for c in ledger["charges"])
    assert set(per_key) == set(keys)
    assert max(per_key.values()) == 1, "no key charged twice"
    stats = await pipeline.sim_get("/_sim/stats")
    print(f"\nsimulator stats under faults: {json.dumps(stats)[:400]}")
