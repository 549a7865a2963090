"""A real webhook receiver for tests: an aiohttp app on a free loopback port that records what
arrives and answers as the test scripts it (status codes, hangs, being down)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from relay.processes import LOCALHOST, free_port

Behaviour = Callable[[int], "int | float"]
"""Given the 1-based number of the request, an HTTP status to answer, or a negative number of
seconds to hang before answering 200 (longer than the relay's timeout: the attempt times out)."""


@dataclass
class Delivery:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass
class Receiver:
    """Records every request; ``behaviour`` decides the answer."""

    behaviour: Behaviour = lambda _: 200
    port: int = field(default_factory=free_port)
    path: str = "/hook"
    deliveries: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(Delivery(dict(request.headers), body, time.time()))
        answer = self.behaviour(len(self.deliveries))
        if answer < 0:
            await asyncio.sleep(-answer)
            return web.Response(status=200)
        return web.Response(status=int(answer), text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def by_id(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            out.setdefault(d.headers.get("webhook-id", ""), []).append(d)
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.05)
        return predicate()
