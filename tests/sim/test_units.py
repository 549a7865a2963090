"""Pure pieces: prices, the PNG encoder, the lazy timeline of one task."""

from __future__ import annotations

from decimal import Decimal

import pytest

from relay.sim.images import solid_png, task_image_png
from relay.sim.ledger import actual_cost, estimate_cost
from relay.sim.tasks import Task
from tests.sim.helpers import png_size

PRICE_2K = Decimal("0.0252")


@pytest.mark.parametrize(
    ("model_input", "expected"),
    [
        ({}, "0.0252"),
        ({"n": 2}, "0.0504"),
        ({"resolution": "1K", "n": 15}, "0.1890"),
        ({"resolution": "4K", "n": 15}, "0.7560"),
        ({"n": True}, "0.0252"),
    ],
)
def test_estimate(model_input: dict[str, object], expected: str) -> None:
    assert estimate_cost(PRICE_2K, model_input) == Decimal(expected)


def test_estimate_rounds_half_up_to_four_places() -> None:
    assert estimate_cost(Decimal("0.00005"), {"n": 1}) == Decimal("0.0001")
    assert estimate_cost(Decimal("0.00015"), {"resolution": "1K"}) == Decimal("0.0001")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("queued", None), ("processing", None), ("succeeded", "0.05"), ("failed", "0")],
)
def test_actual_cost(status: str, expected: str | None) -> None:
    cost = actual_cost(Decimal("0.05"), status)
    assert cost == (None if expected is None else Decimal(expected))
    assert actual_cost(Decimal("0.05"), "cancelled") == Decimal("0")


def test_png_encoder() -> None:
    assert png_size(solid_png(3, 5, (1, 2, 3))) == (3, 5)
    assert task_image_png("task_a", 0) == task_image_png("task_a", 0)
    assert task_image_png("task_a", 0) != task_image_png("task_b", 0)


def _task(**overrides: object) -> Task:
    fields: dict[str, object] = {
        "task_id": "task_t",
        "request_id": "req_r",
        "api_key": "k",
        "model": "m",
        "n": 1,
        "cost_estimate_usd": PRICE_2K,
        "idempotency_key": None,
        "fingerprint": "f",
        "created_at_s": 100.0,
        "queued_s": 0.0,
        "processing_s": 2.0,
        "outcome": "succeeded",
        **overrides,
    }
    return Task(**fields)  # type: ignore[arg-type]


def test_zero_queue_time_still_has_a_queued_event() -> None:
    task = _task()
    assert [(e.seq, e.status) for e in task.events(100.0)] == [(1, "queued"), (2, "processing")]
    assert task.status(100.0) == "processing"
    assert task.next_change_at(100.0) == 102.0
    assert task.next_change_at(102.0) is None


def test_cancel_keeps_past_events_and_ends_the_plan() -> None:
    task = _task(queued_s=1.0, cancelled_at_s=101.5)
    timeline = [(e.seq, e.status, e.at_s) for e in task.timeline()]
    assert timeline == [(1, "queued", 100.0), (2, "processing", 101.0), (3, "cancelled", 101.5)]
    assert task.status(500.0) == "cancelled"
