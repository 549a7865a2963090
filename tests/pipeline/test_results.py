"""A terminal snapshot becomes the DESIGN §3 result, liberal in what MindVideo sends."""

from __future__ import annotations

from relay.models import RequestRecord, TaskSnapshot, event_id_for
from relay.pipeline.idempotency import IdempotencyRecord, KeyState
from relay.pipeline.results import completed_at_of, failed_result, task_error, terminal_result

MODEL = "apimart-doubao-seedance-4-0"
REQUEST = RequestRecord(model=MODEL, input={"prompt": "x"}, metadata={"order": "1"})
KNOWN = IdempotencyRecord(
    state=KeyState.SUBMITTED,
    task_id="task_1",
    request_id="req_1",
    cost_estimate=0.0252,
    submitted_at="2026-11-25T19:00:00.000Z",
)


def test_succeeded_snapshot() -> None:
    snapshot = TaskSnapshot.model_validate(
        {
            "task_id": "task_1",
            "status": "completed",
            "output": {"images": [{"url": "https://x/1.png"}]},
            "cost_actual": 0.0252,
            "updated_at": "2026-11-25T19:00:09.412+00:00",
            "something_new": {"ignored": True},
        }
    )
    result = terminal_result("k", REQUEST, KNOWN, snapshot)
    assert (result.type, result.status, result.error) == ("task.succeeded", "succeeded", None)
    assert result.event_id == event_id_for("k", "task.succeeded")
    assert result.request_id == "req_1", "kept from the submit when the snapshot has none"
    assert result.completed_at == "2026-11-25T19:00:09.412Z"
    assert (result.cost_estimate, result.cost_actual) == (0.0252, 0.0252)
    assert result.metadata == {"order": "1"}


def test_failed_snapshot_with_a_string_error() -> None:
    snapshot = TaskSnapshot.model_validate(
        {"task_id": "task_1", "status": "error", "error": "content policy", "cost_actual": 0}
    )
    result = terminal_result("k", REQUEST, KNOWN, snapshot)
    assert (result.type, result.status) == ("task.failed", "failed")
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("task_failed", "content policy")


def test_follow_timeout_is_a_failed_result_with_its_own_code() -> None:
    result = failed_result("k", REQUEST, KNOWN, "relay_follow_timeout", "not terminal after 6h")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "relay_follow_timeout"
    assert result.task_id == "task_1"


def test_a_lost_task_is_a_failed_result_with_unknown_cost() -> None:
    result = failed_result("k", REQUEST, KNOWN, "task_lost", "404 task_not_found")
    assert (result.type, result.status, result.event_id) == (
        "task.failed",
        "failed",
        event_id_for("k", "task.failed"),
    )
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("task_lost", "404 task_not_found")
    assert (result.cost_estimate, result.cost_actual) == (0.0252, None)
    assert (result.request_id, result.submitted_at) == ("req_1", "2026-11-25T19:00:00.000Z")
    assert result.metadata == {"order": "1"}


def test_error_and_time_shapes() -> None:
    assert task_error({"code": "nsfw", "message": "no"}).code == "nsfw"
    assert task_error({"detail": "why"}).message == "why"
    assert task_error(None).message == "MindVideo reported no reason"
    naive = TaskSnapshot.model_validate(
        {"task_id": "t", "status": "failed", "finished_at": "2026-11-25T19:00:01"}
    )
    assert completed_at_of(naive) == "2026-11-25T19:00:01.000Z"
    garbage = TaskSnapshot.model_validate(
        {"task_id": "t", "status": "failed", "completed_at": "yesterday"}
    )
    assert completed_at_of(garbage).endswith("Z"), "an unreadable time falls back to now"
