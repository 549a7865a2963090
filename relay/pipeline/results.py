"""How a task's end becomes its result record (DESIGN §3): status, output, error and costs taken
from MindVideo's terminal snapshot, ids and times from the idempotency record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relay.models import (
    RequestRecord,
    ResultError,
    ResultRecord,
    TaskSnapshot,
    event_id_for,
    format_ts,
    utc_now_iso,
)
from relay.pipeline.idempotency import IdempotencyRecord

FOLLOW_TIMEOUT_CODE = "relay_follow_timeout"
TASK_LOST_CODE = "task_lost"


def terminal_result(
    key: str, request: RequestRecord, known: IdempotencyRecord, snapshot: TaskSnapshot
) -> ResultRecord:
    """The result of a task that ended: status, output, error and cost from MindVideo."""
    status = snapshot.status
    error = task_error(snapshot.error) if status != "succeeded" else None
    return _result(
        key,
        request,
        known,
        status=status,
        output=snapshot.output,
        error=error,
        cost_actual=snapshot.cost_actual,
        request_id=snapshot.request_id or known.request_id,
        completed_at=completed_at_of(snapshot),
    )


def failed_result(
    key: str, request: RequestRecord, known: IdempotencyRecord, code: str, message: str
) -> ResultRecord:
    """A ``task.failed`` the relay decides for a submitted task that will not end by itself:
    ``relay_follow_timeout`` (not terminal ``RELAY_TASK_TIMEOUT_S`` after its submit) or
    ``task_lost`` (MindVideo no longer knows it). Its actual cost is unknown (``null``)."""
    return _result(
        key,
        request,
        known,
        status="failed",
        output=None,
        error=ResultError(code=code, message=message),
        cost_actual=None,
        request_id=known.request_id,
        completed_at=utc_now_iso(),
    )


def _result(
    key: str,
    request: RequestRecord,
    known: IdempotencyRecord,
    *,
    status: str,
    output: dict[str, Any] | None,
    error: ResultError | None,
    cost_actual: float | None,
    request_id: str | None,
    completed_at: str,
) -> ResultRecord:
    result_type = f"task.{status}"
    return ResultRecord.model_validate(
        {
            "event_id": event_id_for(key, result_type),
            "type": result_type,
            "idempotency_key": key,
            "model": request.model,
            "request_id": request_id,
            "task_id": known.task_id,
            "status": status,
            "output": output,
            "error": error,
            "cost_estimate": known.cost_estimate,
            "cost_actual": cost_actual,
            "submitted_at": known.submitted_at,
            "completed_at": completed_at,
            "metadata": request.metadata,
        }
    )


def task_error(raw: Any) -> ResultError:
    """MindVideo's error, liberal in shape (an object with code/message, a string, nothing)."""
    if isinstance(raw, dict):
        return ResultError(
            code=str(raw.get("code") or "task_failed"),
            message=str(raw.get("message") or raw.get("detail") or ""),
        )
    if raw:
        return ResultError(code="task_failed", message=str(raw))
    return ResultError(code="task_failed", message="MindVideo reported no reason")


def completed_at_of(snapshot: TaskSnapshot) -> str:
    """MindVideo's completion time when it gives one, in the record's format; else now."""
    extra = snapshot.model_extra or {}
    for name in ("completed_at", "finished_at", "updated_at"):
        value = extra.get(name)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                continue
            return format_ts(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return utc_now_iso()
