"""The benchmark's webhook receiver, run as its own process: ``python -m bench.receiver``.

It checks every Standard Webhooks signature (HMAC-SHA256, as any receiver should), answers 200,
and remembers when each ``webhook-id`` first arrived (unix seconds). ``GET /stats`` and
``GET /arrivals`` tell the driver what came; ``POST /reset`` forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import signal
import time

from aiohttp import web

from relay.models import decode_secret
from relay.webhooks.signing import sign

HOOK_PATH = "/hook"


class Receiver:
    """Counts deliveries and checks their signatures against one ``whsec_`` secret."""

    def __init__(self, secret: str) -> None:
        self._key = decode_secret(secret)
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.bad_signatures = 0

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        self.requests += 1
        msg_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        offered = request.headers.get("webhook-signature", "").split(" ")
        expected = sign(self._key, msg_id, int(timestamp or 0), body)
        if not any(hmac.compare_digest(expected, entry) for entry in offered):
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        self.arrivals.setdefault(msg_id, now)
        return web.Response(text="ok")

    async def stats(self, _: web.Request) -> web.Response:
        last = max(self.arrivals.values(), default=0.0)
        return web.json_response(
            {
                "count": len(self.arrivals),
                "requests": self.requests,
                "bad_signatures": self.bad_signatures,
                "last_at": last,
            }
        )

    async def all_arrivals(self, _: web.Request) -> web.Response:
        return web.json_response({"arrivals": self.arrivals})

    async def reset(self, _: web.Request) -> web.Response:
        self.arrivals.clear()
        self.requests = 0
        self.bad_signatures = 0
        return web.json_response({"reset": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self.hook)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/arrivals", self.all_arrivals)
        app.router.add_post("/reset", self.reset)
        return app


async def _serve(port: int, secret: str) -> None:
    runner = web.AppRunner(Receiver(secret).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.secret))


if __name__ == "__main__":
    main()
