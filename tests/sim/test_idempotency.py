"""Idempotency-Key: replay without a charge, 409 on a different payload, scoped per API key."""

from __future__ import annotations

import pytest

from tests.sim.helpers import (
    OTHER_KEY,
    FakeClock,
    SimClient,
    auth,
    ledger,
    submit,
    submit_ok,
)


async def test_replay_returns_original_task_without_charging(
    sim: SimClient, clock: FakeClock
) -> None:
    first = await submit_ok(sim, {"prompt": "panda", "n": 2}, idempotency_key="order-1")
    clock.advance(3)  # now processing
    replay = await submit(sim, {"n": 2, "prompt": "panda"}, idempotency_key="order-1")
    assert replay.status == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    body = await replay.json()
    assert body == {**first, "status": "processing"}
    assert replay.headers["X-Request-Id"] != first["request_id"]

    book = await ledger(sim)
    assert book["count"] == 1
    assert book["charges"][0]["idempotency_key"] == "order-1"
    assert book["charges"][0]["task_id"] == first["task_id"]
    assert book["total_estimate_usd"] == 0.0504


async def test_replay_after_terminal_shows_terminal_status(
    sim: SimClient, clock: FakeClock
) -> None:
    first = await submit_ok(sim, idempotency_key="k")
    clock.advance(60)
    body = await (await submit(sim, idempotency_key="k")).json()
    assert body["task_id"] == first["task_id"]
    assert body["status"] == "succeeded"


async def test_same_key_different_payload_is_409(sim: SimClient) -> None:
    await submit_ok(sim, {"prompt": "panda"}, idempotency_key="order-2")
    for changed in ({"prompt": "tiger"}, {"prompt": "panda", "n": 1}):
        resp = await submit(sim, changed, idempotency_key="order-2")
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "idempotency_conflict"
    other_model = await sim.post(
        "/api/v1/tasks",
        json={"model": "apimart-doubao-seedance-4-0", "input": {"prompt": "panda"}},
        headers={**auth(), "Idempotency-Key": "order-2"},
    )
    assert other_model.status == 200  # identical payload: a replay
    assert (await ledger(sim))["count"] == 1


async def test_keys_are_scoped_per_api_key(sim: SimClient) -> None:
    mine = await submit_ok(sim, {"prompt": "panda"}, idempotency_key="shared")
    theirs = await submit(sim, {"prompt": "tiger"}, idempotency_key="shared", key=OTHER_KEY)
    assert theirs.status == 200
    assert "Idempotent-Replayed" not in theirs.headers
    assert (await theirs.json())["task_id"] != mine["task_id"]
    assert (await ledger(sim))["count"] == 2


@pytest.mark.parametrize("header", ["", "x" * 256, "caf\u00e9"])
async def test_malformed_idempotency_key_is_400(sim: SimClient, header: str) -> None:
    resp = await sim.post(
        "/api/v1/tasks",
        json={"model": "apimart-doubao-seedance-4-0", "input": {"prompt": "x"}},
        headers={**auth(), "Idempotency-Key": header},
    )
    assert resp.status == 400
    assert "Idempotency-Key" in (await resp.json())["error"]["message"]
    assert (await ledger(sim))["count"] == 0


async def test_longest_key_is_accepted(sim: SimClient) -> None:
    assert (await submit(sim, idempotency_key="k" * 255)).status == 200


async def test_invalid_input_under_a_used_key_is_422_not_a_replay(sim: SimClient) -> None:
    await submit_ok(sim, idempotency_key="k")
    resp = await submit(sim, {"prompt": "x", "n": 0}, idempotency_key="k")
    assert resp.status == 422


async def test_reset_forgets_keys(sim: SimClient) -> None:
    first = await submit_ok(sim, idempotency_key="k")
    assert (await sim.post("/_sim/reset")).status == 200
    second = await submit_ok(sim, idempotency_key="k")
    assert second["task_id"] != first["task_id"]
    assert (await ledger(sim))["count"] == 1
