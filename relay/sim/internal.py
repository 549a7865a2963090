"""The simulator's own control surface under ``/_sim/``: no auth, never subject to faults.

Tests read the ledger and stats to prove what the relay did (a charge, or no submit at all),
and change keys and faults while the relay runs.
"""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web
from pydantic import ValidationError

from relay.sim.api import read_json_object
from relay.sim.images import task_image_png
from relay.sim.keys import KeyChange
from relay.sim.ledger import COST_QUANTUM_USD, actual_cost
from relay.sim.state import STATE
from relay.sim.wire import ApiError, ChargeBody, ErrorDetail, LedgerBody, iso_ts, json_body


def _invalid(exc: ValidationError) -> ApiError:
    details = [
        ErrorDetail(field=".".join(str(p) for p in err["loc"]) or "body", message=err["msg"])
        for err in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details)
    return ApiError(422, "invalid_request", summary, details=details)


async def get_ledger(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/ledger``: every charge with its task's current status and actual cost."""
    state = request.app[STATE]
    now_s = state.now()
    lines: list[ChargeBody] = []
    total_estimate = Decimal("0")
    total_actual = Decimal("0")
    for charge in state.ledger.charges():
        task = state.store.tasks.get(charge.task_id)
        status = task.status(now_s) if task is not None else "unknown"
        cost = actual_cost(charge.amount_usd, status)
        total_estimate += charge.amount_usd
        total_actual += cost or Decimal("0")
        lines.append(
            ChargeBody(
                idempotency_key=charge.idempotency_key,
                task_id=charge.task_id,
                request_id=charge.request_id,
                model=charge.model,
                amount_usd=float(charge.amount_usd),
                created_at=iso_ts(charge.created_at_s),
                status=status,
                cost_actual=None if cost is None else float(cost),
            )
        )
    body = LedgerBody(
        charges=lines,
        count=len(lines),
        total_estimate_usd=float(total_estimate),
        total_actual_usd=float(total_actual),
    )
    return json_body(body)


async def get_faults(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/faults``: the fault settings in force."""
    return json_body(request.app[STATE].faults.config)


async def put_faults(request: web.Request) -> web.StreamResponse:
    """``PUT /_sim/faults``: change any subset of the faults; answers the full new settings."""
    faults = request.app[STATE].faults
    patch = await read_json_object(request)
    try:
        return json_body(faults.update(patch))
    except ValidationError as exc:
        raise _invalid(exc) from exc


async def get_keys(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/keys``: every key with whether it is active and in credit."""
    return json_body(request.app[STATE].keys.view())


async def post_keys(request: web.Request) -> web.StreamResponse:
    """``POST /_sim/keys``: add, revoke, restore, (un)credit or remove keys; all or nothing."""
    keys = request.app[STATE].keys
    try:
        change = KeyChange.model_validate(await read_json_object(request))
    except ValidationError as exc:
        raise _invalid(exc) from exc
    try:
        keys.apply(change)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    return json_body(keys.view())


async def post_reset(request: web.Request) -> web.StreamResponse:
    """``POST /_sim/reset``: forget tasks, charges, idempotency keys and request stats.

    Keys and faults are left as they are: they are settings, not history.
    """
    state = request.app[STATE]
    state.store.clear()
    state.ledger.clear()
    state.stats.clear()
    return web.json_response({"reset": True})


async def post_forget(request: web.Request) -> web.StreamResponse:
    """``POST /_sim/forget`` ``{"task_ids": [...]}``: MindVideo stops knowing these tasks, as
    after a purge: 404 from then on and open event streams end. Charges stay on the ledger."""
    body = await read_json_object(request)
    task_ids = body.get("task_ids")
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        raise ApiError(422, "invalid_request", "task_ids: a list of task ids is required")
    store = request.app[STATE].store
    return web.json_response({"forgotten": [t for t in task_ids if store.forget(t)]})


async def post_reprice(request: web.Request) -> web.StreamResponse:
    """``POST /_sim/tasks/{task_id}/reprice`` ``{"cost_usd": 0.05}``: MindVideo changes what the
    task costs after the fact (its estimate, its actual cost once succeeded, and its charge on the
    ledger), as a billing correction would; ``relay reconcile`` should notice."""
    state = request.app[STATE]
    task = state.store.tasks.get(request.match_info["task_id"])
    body = await read_json_object(request)
    cost = body.get("cost_usd")
    if not isinstance(cost, int | float) or isinstance(cost, bool) or cost < 0:
        raise ApiError(422, "invalid_request", "cost_usd: a number of USD, 0 or more, is required")
    if task is None:
        raise ApiError(404, "task_not_found", "no such task")
    amount = Decimal(str(cost)).quantize(COST_QUANTUM_USD)
    task.cost_estimate_usd = amount
    state.ledger.reprice(task.task_id, amount)
    return web.json_response({"task_id": task.task_id, "cost_usd": float(amount)})


async def get_stats(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/stats``: tasks by current status and requests by endpoint and status code."""
    state = request.app[STATE]
    return web.json_response(
        {
            "tasks": state.store.count_by_status(state.now()),
            "tasks_total": len(state.store.tasks),
            "streams_open": state.store.open_streams(),
            "charges": len(state.ledger.charges()),
            "requests": state.stats.view(),
        }
    )


async def get_image(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/images/{task_id}/{index}.png``: an output image of a succeeded task."""
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    index_text = request.match_info["index"]
    task = state.store.tasks.get(task_id)
    index = int(index_text) if index_text.isdigit() else -1
    if task is None or task.status(state.now()) != "succeeded" or not 0 <= index < task.n:
        raise ApiError(404, "not_found", "no such image")
    return web.Response(body=task_image_png(task_id, index), content_type="image/png")
