"""``relay reconcile`` end to end: zero drift after a chaos run (MindVideo failing, tasks failing,
streams dropping, the relay SIGKILLed and restarted), drift once MindVideo's ledger changes behind
the relay's back; and the running relay exports the last drift."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.spend.test_budgets_e2e import _eventually, reconcile
from tests.support.pipeline import Pipeline

MODEL = "apimart-doubao-seedance-4-0"


@pytest.fixture
def sim_args() -> list[str]:
    return (
        "--queued-s 0.2 --processing-s 0.5-3 --failure-rate 0.1 --rate-5xx 0.1 --rate-429 0.05"
        " --retry-after-s 1 --stream-drop-rate 0.3"
    ).split()


def _table_row(output: str) -> list[str]:
    [row] = [line for line in output.splitlines() if line.startswith(MODEL)]
    return re.split(r"\s{2,}", row.strip())


async def test_reconcile_finds_no_drift_after_chaos_and_the_drift_of_a_repriced_task(
    tansu_pipeline: Pipeline, unique: str
) -> None:
    pipe = tansu_pipeline
    relay, port = await pipe.start_relay()
    keys = [f"rec-{unique[:8]}-{i:03d}" for i in range(60)]
    records = [
        (k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}}).encode()) for k in keys
    ]
    await pipe.produce(records[:40])
    await asyncio.sleep(2.5)
    relay.kill()
    await pipe.restart_relay(relay, port)
    await pipe.produce(records[40:])
    results = {r.key: r.value for r in await pipe.results(set(keys), 120)}
    statuses = {v["status"] for v in results.values()}
    assert "failed" in statuses, "the chaos run had failed tasks"

    code, output = await reconcile(pipe, "10m")
    assert code == 0, output
    assert "everything agrees" in output
    tasks, in_flight, mismatched = _table_row(output)[1:4]
    assert (int(tasks), int(in_flight), int(mismatched)) == (60, 0, 0)

    async def exported(value: float, mismatches: float) -> bool:
        drift = await pipe.metric(port, "relay_reconcile_drift_usd", model=MODEL)
        count = await pipe.metric(port, "relay_reconcile_mismatched_tasks", model=MODEL)
        ran = await pipe.metric(port, "relay_reconcile_last_run_timestamp_seconds")
        return ran > 0 and abs(drift - value) < 1e-9 and count == mismatches

    await _eventually(lambda: exported(0.0, 0), 15, "the relay exports zero drift")

    # MindVideo bills one succeeded task differently; the relay is not told.
    repriced = next(v for v in results.values() if v["status"] == "succeeded")
    await pipe.sim_post(f"/_sim/tasks/{repriced['task_id']}/reprice", {"cost_usd": 0.05})
    code, output = await reconcile(pipe, "10m")
    assert code == 1, output
    assert repriced["task_id"] in output
    assert "actual costs differ" in output
    row = _table_row(output)
    assert row[3] == "1", "one task disagrees"
    assert float(row[-1]) == pytest.approx(0.05 - 0.0252), "the drift in USD"
    await _eventually(lambda: exported(0.0248, 1), 15, "the relay exports the drift")
    print(f"\nreconcile after the chaos run and a repriced task:\n{output}")
