"""The relay's own HTTP endpoints (DESIGN §7) and its status page.

``/healthz`` (the process and its event loop answer), ``/readyz`` (Kafka and Redis usable; every
check named in the body, MindVideo's credentials included), ``/metrics`` (Prometheus text),
``/`` and ``/status.json`` (the status page), ``/webhooks/deliveries?key=K`` (every attempt of a
key's webhooks, docs/webhooks.md). With ``RELAY_HTTP_TOKEN`` set, everything but the three probe
and scrape endpoints needs ``Authorization: Bearer <token>`` (or ``?token=`` for a browser).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.metrics import METRICS_CONTENT_TYPE, RelayMetrics
from relay.status import STATUS_PAGE_HTML, RecentResults, status_document

ReadinessCheck = Callable[[], Awaitable[dict[str, str | None]]]
EndpointRows = Callable[[], Awaitable[list[dict[str, Any]]]]
DeliveryLookup = Callable[[str, bool], Awaitable[dict[str, Any]]]
MAX_KEY_CHARS = 255
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Checks /readyz reports but that do not make it answer 503: refused MindVideo credentials are
# the operator's to fix and no restart or reschedule helps, while an unready pod counts as
# disrupted for a PodDisruptionBudget and would block node drains and rollouts. The relay takes
# no new work meanwhile; ``relay_dependency_up{dependency="mindvideo"}`` and an alert say why.
ADVISORY_CHECKS = frozenset({"mindvideo"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _token_guard(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        given = given or request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), expected):
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "a bearer token is required"}},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="mindvideo-relay"'},
            )
        return await handler(request)

    return guard


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def build_http_app(
    metrics: RelayMetrics,
    readiness: ReadinessCheck,
    *,
    recent: RecentResults | None = None,
    token: str | None = None,
    webhook_endpoints: EndpointRows | None = None,
    webhook_lookup: DeliveryLookup | None = None,
    budgets: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    """``readiness`` returns each dependency's problem (``None`` when fine); the webhook
    callables come from the dispatcher (``None`` when webhooks are disabled here); ``budgets``
    the spend budgets' section of the status page (``relay.spend.monitor``)."""
    started_at = time.time()
    recent = recent or RecentResults()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        failing = {name for name, problem in checks.items() if problem is not None}
        ready = not failing - ADVISORY_CHECKS
        status = "not_ready" if not ready else "degraded" if failing else "ready"
        body = {
            "status": status,
            "checks": {name: problem or "ok" for name, problem in checks.items()},
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return resp

    async def status_page(_: web.Request) -> web.Response:
        return web.Response(
            text=STATUS_PAGE_HTML,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def status_json(_: web.Request) -> web.Response:
        endpoints = await webhook_endpoints() if webhook_endpoints else []
        doc = status_document(metrics.registry, recent, await readiness(), started_at, endpoints)
        if budgets is not None:
            doc["budgets"] = budgets()
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    async def webhook_deliveries(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        if not key or len(key) > MAX_KEY_CHARS:
            return _error(400, "bad_request", "give ?key=<idempotency key> (1-255 characters)")
        if webhook_lookup is None:
            return _error(404, "webhooks_disabled", "this process does not deliver webhooks")
        with_dead_letters = request.query.get("dead_letters", "true").lower() != "false"
        doc = await webhook_lookup(key, with_dead_letters)
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    app = web.Application(middlewares=[_token_guard(token)] if token else [])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/", status_page)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/webhooks/deliveries", webhook_deliveries)
    return app
