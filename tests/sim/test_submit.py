"""POST /api/v1/tasks: malformed requests, unknown models, schema errors, success and price."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.schemas import SEEDANCE_4_0
from tests.sim.conftest import SimFactory
from tests.sim.helpers import PANDA, START_S, FakeClock, SimClient, auth, ledger, submit, submit_ok

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"input": {"prompt": "x"}}',
        b'{"model": "apimart-doubao-seedance-4-0"}',
        b'{"model": 7, "input": {"prompt": "x"}}',
        b"\xff\xfe",
    ],
)
async def test_malformed_request_is_400(sim: SimClient, body: bytes) -> None:
    resp = await sim.post("/api/v1/tasks", data=body, headers=auth())
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert (await ledger(sim))["count"] == 0


async def test_unknown_model_is_404(sim: SimClient) -> None:
    resp = await submit(sim, {"prompt": "x"}, model="apimart-unknown-model")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found"
    assert "apimart-unknown-model" in error["message"]


INVALID_INPUTS: list[tuple[dict[str, Any] | Any, set[str]]] = [
    ({"prompt": "x", "colour": "red"}, {"input.colour"}),
    ({"prompt": "x", "resolution": "8K"}, {"input.resolution"}),
    ({"prompt": "x", "optimize_prompt_options": "slow"}, {"input.optimize_prompt_options"}),
    ({"prompt": "x", "sequential_image_generation": "on"}, {"input.sequential_image_generation"}),
    ({"prompt": "x", "n": 0}, {"input.n"}),
    ({"prompt": "x", "n": 16}, {"input.n"}),
    ({"prompt": "x", "n": "2"}, {"input.n"}),
    ({"prompt": "x", "n": True}, {"input.n"}),
    ({"prompt": "x", "n": 2.0}, {"input.n"}),
    ({"prompt": "x", "watermark": "yes"}, {"input.watermark"}),
    ({"prompt": ""}, {"input.prompt"}),
    ({"prompt": "x" * 1001}, {"input.prompt"}),
    ({"prompt": 5}, {"input.prompt"}),
    ({}, {"input.prompt"}),
    ({"prompt": "x", "image_urls": []}, {"input.image_urls"}),
    ({"prompt": "x", "image_urls": ["u"] * 16}, {"input.image_urls"}),
    ({"prompt": "x", "image_urls": ["u"] * 10, "n": 6}, {"input.image_urls"}),
    ({"prompt": "x", "image_urls": [3]}, {"input.image_urls.0"}),
    (
        {"prompt": "x", "sequential_image_generation_options": {"max_images": 20}},
        {"input.sequential_image_generation_options.max_images"},
    ),
    (
        {"prompt": "x", "sequential_image_generation_options": {"other": 1}},
        {"input.sequential_image_generation_options.other"},
    ),
    ({"n": 99, "resolution": "3K", "extra": 1}, {"input.prompt", "input.n", "input.resolution"}),
    ("a string", {"input"}),
    (None, {"input"}),
]


@pytest.mark.parametrize(("model_input", "fields"), INVALID_INPUTS)
async def test_invalid_input_is_422_naming_each_field(
    sim: SimClient, model_input: Any, fields: set[str]
) -> None:
    body = {"model": SEEDANCE_4_0, "input": model_input}
    resp = await sim.post("/api/v1/tasks", json=body, headers=auth())
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_input"
    named = {detail["field"] for detail in error["details"]}
    assert fields <= named
    for field in fields:
        assert field in error["message"]
    assert all(detail["message"] for detail in error["details"])
    assert (await ledger(sim))["count"] == 0


async def test_success_body(sim: SimClient) -> None:
    resp = await submit(sim)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {
        "request_id",
        "task_id",
        "model",
        "status",
        "cost_estimate",
        "created_at",
    }
    assert body["request_id"].startswith("req_")
    assert body["task_id"].startswith("task_")
    assert body["model"] == SEEDANCE_4_0
    assert body["status"] == "queued"
    assert body["cost_estimate"] == 0.0252
    assert ISO_MS_Z.match(body["created_at"])
    assert resp.headers["X-Request-Id"] == body["request_id"]
    assert "Idempotent-Replayed" not in resp.headers


async def test_created_at_follows_the_clock(sim: SimClient, clock: FakeClock) -> None:
    clock.advance(0.1234)
    body = await submit_ok(sim)
    expected = datetime.fromtimestamp(START_S + 0.1234, UTC).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    assert body["created_at"] == expected


@pytest.mark.parametrize(
    ("model_input", "cost"),
    [
        ({"prompt": "x"}, 0.0252),
        ({"prompt": "x", "resolution": "1K"}, 0.0126),
        ({"prompt": "x", "resolution": "4K"}, 0.0504),
        ({"prompt": "x", "n": 3}, 0.0756),
        ({"prompt": "x", "n": 15, "resolution": "4K"}, 0.756),
        ({"prompt": "x", "n": 7, "resolution": "1K"}, 0.0882),
    ],
)
async def test_price_scales_with_n_and_resolution(
    sim: SimClient, model_input: dict[str, Any], cost: float
) -> None:
    assert (await submit_ok(sim, model_input))["cost_estimate"] == cost


async def test_configured_model_without_schema_is_accepted_and_priced(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(models={SEEDANCE_4_0: "0.0252", "apimart-other": "0.1"})
    body = await submit_ok(sim, {"anything": True, "n": 2}, model="apimart-other")
    assert body["cost_estimate"] == 0.2
    resp = await submit(sim, ["not", "an", "object"], model="apimart-other")
    assert resp.status == 422


async def test_each_submit_without_key_is_a_new_task_and_charge(sim: SimClient) -> None:
    first = await submit_ok(sim, PANDA)
    second = await submit_ok(sim, PANDA)
    assert first["task_id"] != second["task_id"]
    book = await ledger(sim)
    assert book["count"] == 2
    assert [c["idempotency_key"] for c in book["charges"]] == [None, None]
