"""``POST /_sim/tasks/{id}/reprice``: MindVideo changes what a task costs behind the relay's back
(for tests of ``relay reconcile``)."""

from __future__ import annotations

from tests.sim.helpers import FakeClock, SimClient, auth, ledger, submit_ok


async def test_a_repriced_task_costs_the_new_amount_everywhere(
    sim: SimClient, clock: FakeClock
) -> None:
    task = await submit_ok(sim, {"prompt": "x"})
    untouched = await submit_ok(sim, {"prompt": "y"})
    resp = await sim.post(f"/_sim/tasks/{task['task_id']}/reprice", json={"cost_usd": 0.05})
    assert resp.status == 200
    assert await resp.json() == {"task_id": task["task_id"], "cost_usd": 0.05}
    clock.advance(60)
    snapshot = await (await sim.get(f"/api/v1/tasks/{task['task_id']}", headers=auth())).json()
    assert (snapshot["cost_estimate"], snapshot["cost_actual"]) == (0.05, 0.05)
    book = await ledger(sim)
    amounts = {c["task_id"]: c["amount_usd"] for c in book["charges"]}
    assert amounts == {task["task_id"]: 0.05, untouched["task_id"]: 0.0252}
    assert book["total_estimate_usd"] == 0.0752


async def test_reprice_needs_a_known_task_and_a_cost(sim: SimClient) -> None:
    task = await submit_ok(sim, {"prompt": "x"})
    missing = await sim.post("/_sim/tasks/task_nope/reprice", json={"cost_usd": 1})
    assert missing.status == 404
    for body in ({}, {"cost_usd": -1}, {"cost_usd": "1"}, {"cost_usd": True}):
        resp = await sim.post(f"/_sim/tasks/{task['task_id']}/reprice", json=body)
        assert resp.status == 422, body
