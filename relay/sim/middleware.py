"""Cross-cutting request handling: request ids, stats, JSON errors, and the ``/api/v1`` gate.

The gate runs, in order: added latency, bearer-key auth (401), then the 429/5xx faults. All of
that happens before a handler runs, so a refused request never creates or charges anything. A
reply delay (``reply_delay_ms``) is added after the handler: the request took effect, its answer
is late.
``/_sim/`` routes bypass the gate: no auth, no faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.sim.keys import KeyStatus
from relay.sim.state import API_KEY, REQUEST_ID, STATE
from relay.sim.tasks import new_id
from relay.sim.wire import ApiError

API_PREFIX = "/api/v1/"
UNMATCHED_ENDPOINT = "unmatched"
_HTTP_ERROR_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint_of(request: web.Request) -> str:
    """``METHOD /pattern`` of the matched route, so stats have a bounded set of names."""
    route = request.match_info.route
    if request.match_info.http_exception is not None or route.resource is None:
        return UNMATCHED_ENDPOINT
    return f"{request.method} {route.resource.canonical}"


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: gives each request an id, renders errors as JSON, counts the outcome."""
    request[REQUEST_ID] = new_id("req")
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.to_response()
    except web.HTTPException as exc:
        code = _HTTP_ERROR_CODES.get(exc.status, "http_error")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = ApiError(exc.status, code, exc.reason, headers=allow).to_response()
    request.app[STATE].stats.record(endpoint_of(request), response.status)
    return response


@web.middleware
async def gate_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency, auth and 429/5xx faults for ``/api/v1`` routes; others pass straight through."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    if state.faults.latency_s > 0:
        await asyncio.sleep(state.faults.latency_s)
    if request.match_info.http_exception is not None:
        return await handler(request)  # an unknown route: the router's 404/405
    request[API_KEY] = authenticate(request)
    rejection = state.faults.draw_rejection()
    if rejection is not None:
        raise rejection.to_error()
    response = await handler(request)
    if state.faults.reply_delay_s > 0:
        await asyncio.sleep(state.faults.reply_delay_s)
    return response


def authenticate(request: web.Request) -> str:
    """The bearer key of the request, if it is one of the active keys; otherwise 401."""
    scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>")
    status = request.app[STATE].keys.status(key)
    if status is KeyStatus.UNKNOWN:
        raise ApiError(401, "unauthorized", "invalid API key")
    if status is KeyStatus.REVOKED:
        raise ApiError(401, "unauthorized", "API key has been disabled")
    return key


async def add_request_id_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, streams included, carries ``X-Request-Id``."""
    if not isinstance(request, web.Request):
        return
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
