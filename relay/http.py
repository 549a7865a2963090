"""The relay's own HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics`` (DESIGN §7)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.metrics import METRICS_CONTENT_TYPE, RelayMetrics

ReadinessCheck = Callable[[], Awaitable[dict[str, str | None]]]


def build_http_app(metrics: RelayMetrics, readiness: ReadinessCheck) -> web.Application:
    """``readiness`` returns each dependency's problem (``None`` when fine)."""

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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
