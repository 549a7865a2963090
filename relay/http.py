"""The relay's own HTTP endpoints (DESIGN §7) and its status page.

``/healthz`` (the process and its event loop answer), ``/readyz`` (Kafka, Redis and MindVideo
credentials usable, each problem named), ``/metrics`` (Prometheus text), ``/`` and
``/status.json`` (the status page). With ``RELAY_HTTP_TOKEN`` set, everything but the three
probe and scrape endpoints needs ``Authorization: Bearer <token>`` (or ``?token=`` for a browser).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.metrics import METRICS_CONTENT_TYPE, RelayMetrics
from relay.status import STATUS_PAGE_HTML, RecentResults, status_document

ReadinessCheck = Callable[[], Awaitable[dict[str, str | None]]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
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


def build_http_app(
    metrics: RelayMetrics,
    readiness: ReadinessCheck,
    *,
    recent: RecentResults | None = None,
    token: str | None = None,
    budgets: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    """``readiness`` returns each dependency's problem (``None`` when fine); ``budgets`` the
    spend budgets' section of the status page (``relay.spend.monitor``)."""
    started_at = time.time()
    recent = recent or RecentResults()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(problem is None for problem in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
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
        doc = status_document(metrics.registry, recent, await readiness(), started_at)
        if budgets is not None:
            doc["budgets"] = budgets()
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    app = web.Application(middlewares=[_token_guard(token)] if token else [])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/", status_page)
    app.router.add_get("/status.json", status_json)
    return app
