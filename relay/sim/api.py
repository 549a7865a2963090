"""MindVideo's public task API: submit, read and cancel (``/api/v1/tasks``).

The checks of a submit run in this order, each answering before any side effect:
400 malformed request, 404 unknown model, 422 invalid input, then the idempotency key
(replay 200 or conflict 409), then 402 when the key is out of credit. Only then is a task
created and charged, exactly once.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, StrictStr, ValidationError

from relay.models import payload_fingerprint, valid_idempotency_key
from relay.schemas import FieldError, validate_input
from relay.sim.ledger import Charge, estimate_cost, image_count
from relay.sim.state import REQUEST_ID, STATE, SimState, api_key_of
from relay.sim.tasks import Task, new_id
from relay.sim.wire import ApiError, ErrorDetail, SubmitResponse, iso_ts, json_body

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


class SubmitRequest(BaseModel):
    """``{"model", "input"}``; other top-level fields are ignored, ``input`` is judged later."""

    model: StrictStr
    input: Any


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_request``."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_request", f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    return body


def _parse_submit(body: dict[str, Any]) -> SubmitRequest:
    try:
        return SubmitRequest.model_validate(body)
    except ValidationError as exc:
        fields = ", ".join(str(err["loc"][0]) for err in exc.errors() if err["loc"])
        raise ApiError(400, "invalid_request", f"missing or malformed fields: {fields}") from exc


def _input_errors(model: str, model_input: object) -> list[FieldError]:
    errors = validate_input(model, model_input)
    if errors is None:  # a priced model without a local schema: only the shape is checked
        if isinstance(model_input, dict):
            return []
        return [FieldError(field="input", message="must be a JSON object")]
    return errors


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not valid_idempotency_key(key):
        raise ApiError(
            400, "invalid_request", f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters"
        )
    return key


def _submit_response(task: Task, now_s: float) -> SubmitResponse:
    return SubmitResponse(
        request_id=task.request_id,
        task_id=task.task_id,
        model=task.model,
        status=task.status(now_s),
        cost_estimate=float(task.cost_estimate_usd),
        created_at=iso_ts(task.created_at_s),
    )


async def submit_task(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/tasks``: create (and charge) a task, or replay the one under the key."""
    state = request.app[STATE]
    api_key = api_key_of(request)
    idempotency_key = _idempotency_key(request)
    submit = _parse_submit(await read_json_object(request))
    price_2k_usd = state.config.models.get(submit.model)
    if price_2k_usd is None:
        raise ApiError(404, "model_not_found", f"unknown model {submit.model!r}")
    errors = _input_errors(submit.model, submit.input)
    if errors:
        summary = "; ".join(f"{err.field}: {err.message}" for err in errors)
        details = [ErrorDetail(field=err.field, message=err.message) for err in errors]
        raise ApiError(422, "invalid_input", f"invalid input: {summary}", details=details)
    model_input: dict[str, Any] = submit.input
    fingerprint = payload_fingerprint(submit.model, model_input)
    now_s = state.now()
    if idempotency_key is not None:
        existing = state.store.by_idempotency_key(api_key, idempotency_key)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise ApiError(
                    409,
                    "idempotency_conflict",
                    f"{IDEMPOTENCY_HEADER} was already used with a different payload",
                )
            return json_body(_submit_response(existing, now_s), headers={REPLAYED_HEADER: "true"})
    if not state.keys.has_credit(api_key):
        raise ApiError(402, "insufficient_credit", "the account has no credit left")
    task = _create_task(
        state,
        request_id=request[REQUEST_ID],
        api_key=api_key,
        model=submit.model,
        model_input=model_input,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        now_s=now_s,
    )
    return json_body(_submit_response(task, now_s))


def _create_task(
    state: SimState,
    *,
    request_id: str,
    api_key: str,
    model: str,
    model_input: dict[str, Any],
    idempotency_key: str | None,
    fingerprint: str,
    now_s: float,
) -> Task:
    """Plan the task's timeline and outcome, store it and charge its estimate."""
    rng = state.timeline_rng
    faults = state.faults.config
    task = Task(
        task_id=new_id("task"),
        request_id=request_id,
        api_key=api_key,
        model=model,
        n=image_count(model_input),
        cost_estimate_usd=estimate_cost(state.config.models[model], model_input),
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        created_at_s=now_s,
        queued_s=state.config.queued_s.draw(rng),
        processing_s=state.config.processing_s.draw(rng),
        outcome="failed" if rng.random() < faults.failure_rate else "succeeded",
    )
    state.store.add(task)
    state.ledger.append(
        Charge(
            idempotency_key=idempotency_key,
            task_id=task.task_id,
            request_id=task.request_id,
            model=model,
            amount_usd=task.cost_estimate_usd,
            created_at_s=task.created_at_s,
        )
    )
    return task


def find_task(request: web.Request) -> Task:
    """The task named in the path, if the caller's key owns it; otherwise 404."""
    task_id = request.match_info["task_id"]
    task = request.app[STATE].store.get(api_key_of(request), task_id)
    if task is None:
        raise ApiError(404, "task_not_found", f"no task {task_id!r}")
    return task


async def get_task(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/tasks/{task_id}``: the task's snapshot now."""
    state = request.app[STATE]
    task = find_task(request)
    return json_body(task.snapshot(task.current(state.now()), state.base_url(request)))


async def cancel_task(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/tasks/{task_id}/cancel``: cancelled now, or 409 if already terminal."""
    state = request.app[STATE]
    task = find_task(request)
    now_s = state.now()
    if not state.store.cancel(task, now_s):
        status = task.status(now_s)
        raise ApiError(409, "task_not_cancellable", f"task is already {status}")
    return json_body(task.snapshot(task.current(now_s), state.base_url(request)))
