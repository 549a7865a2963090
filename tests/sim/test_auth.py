"""Auth: bearer keys, revoke/restore at run time, and 402 when a key is out of credit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.helpers import KEY, OTHER_KEY, SimClient, auth, ledger, submit, submit_ok


async def _keys(sim: SimClient, **change: list[str]) -> dict[str, Any]:
    resp = await sim.post("/_sim/keys", json=change)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return {entry["key"]: entry for entry in body["keys"]}


async def _api_statuses(sim: SimClient, task_id: str, key: str = KEY) -> list[int]:
    headers = auth(key)
    body = {"model": "apimart-doubao-seedance-4-0", "input": {"prompt": "x"}}
    responses = [
        await sim.post("/api/v1/tasks", json=body, headers=headers),
        await sim.get(f"/api/v1/tasks/{task_id}", headers=headers),
        await sim.get(f"/api/v1/tasks/{task_id}/events", headers=headers),
        await sim.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers),
    ]
    return [resp.status for resp in responses]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "mv_test_local"},
        {"Authorization": "Basic mv_test_local"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer mv_test_unknown"},
    ],
)
async def test_missing_or_unknown_key_is_401(sim: SimClient, headers: dict[str, str]) -> None:
    resp = await sim.post("/api/v1/tasks", json={"model": "m", "input": {}}, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["message"]
    assert (await ledger(sim))["count"] == 0


async def test_bearer_scheme_is_case_insensitive(sim: SimClient) -> None:
    resp = await sim.post(
        "/api/v1/tasks",
        json={"model": "apimart-doubao-seedance-4-0", "input": {"prompt": "x"}},
        headers={"Authorization": f"bearer {KEY}"},
    )
    assert resp.status == 200


async def test_revoke_gives_401_everywhere_and_restore_brings_it_back(sim: SimClient) -> None:
    task = await submit_ok(sim)
    keys = await _keys(sim, revoke=[KEY])
    assert keys[KEY]["active"] is False
    assert keys[OTHER_KEY]["active"] is True
    assert await _api_statuses(sim, task["task_id"]) == [401, 401, 401, 401]
    assert (await ledger(sim))["count"] == 1

    await _keys(sim, restore=[KEY])
    resp = await sim.get(f"/api/v1/tasks/{task['task_id']}", headers=auth())
    assert resp.status == 200
    assert (await submit(sim)).status == 200


async def test_added_key_works_and_removed_key_is_refused(sim: SimClient) -> None:
    await _keys(sim, add=["mv_live_new"])
    assert (await submit(sim, key="mv_live_new")).status == 200
    await _keys(sim, remove=["mv_live_new"])
    assert (await submit(sim, key="mv_live_new")).status == 401


async def test_out_of_credit_is_402_on_submit_only(sim: SimClient) -> None:
    task = await submit_ok(sim, idempotency_key="before")
    keys = await _keys(sim, no_credit=[KEY])
    assert keys[KEY]["credit"] is False

    resp = await submit(sim, {"prompt": "another"})
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == "insufficient_credit"
    # Reading is not charged, so it still works; so does a replay, which charges nothing.
    assert (await sim.get(f"/api/v1/tasks/{task['task_id']}", headers=auth())).status == 200
    replay = await submit(sim, idempotency_key="before")
    assert replay.status == 200
    assert (await submit(sim, key=OTHER_KEY)).status == 200
    assert (await ledger(sim))["count"] == 2

    await _keys(sim, credit=[KEY])
    assert (await submit(sim, {"prompt": "another"})).status == 200


async def test_key_changes_naming_unknown_keys_change_nothing(sim: SimClient) -> None:
    resp = await sim.post("/_sim/keys", json={"revoke": [KEY, "mv_test_nobody"]})
    assert resp.status == 422
    assert "mv_test_nobody" in (await resp.json())["error"]["message"]
    assert (await submit(sim)).status == 200
    bad_field = await sim.post("/_sim/keys", json={"disable": [KEY]})
    assert bad_field.status == 422
    keys = await sim.get("/_sim/keys")
    assert {entry["key"] for entry in (await keys.json())["keys"]} == {KEY, OTHER_KEY}


async def test_internal_routes_need_no_key(sim: SimClient) -> None:
    for path in ("/_sim/ledger", "/_sim/faults", "/_sim/stats", "/_sim/keys"):
        assert (await sim.get(path)).status == 200, path
