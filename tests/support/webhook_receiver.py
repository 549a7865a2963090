"""A real webhook receiver for tests: an aiohttp app on a free loopback port that records what
arrives and answers as the test scripts it (status codes, hangs, being down)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from relay.devtools.processes import LOCALHOST, free_port

Behaviour = Callable[[int], "int | float"]
"""Given how many times this webhook-id has arrived (1 on the first), an HTTP status to answer,
or a negative number of seconds to hang before answering 200 (longer than the relay's timeout:
the attempt times out)."""


@dataclass
class Delivery:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int = 0


@dataclass
class Receiver:
    """Records every request; ``behaviour`` decides the answer."""

    behaviour: Behaviour = lambda _: 200
    # 0: a port of its own, held from construction on (bound, not yet listening, so connections
    # are refused until ``start``), so no other process's connection can take it meanwhile.
    port: int = 0
    path: str = "/hook"
    deliveries: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _sock: socket.socket | None = None

    def __post_init__(self) -> None:
        if self.port == 0:
            self._sock = _bound_socket(0)
            self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = Delivery(dict(request.headers), body, time.time())
        self.deliveries.append(delivery)
        answer = self.behaviour(len(self.by_id()[delivery.headers.get("webhook-id", "")]))
        if answer < 0:
            # Cancelled when the relay gives up and disconnects: the status stays 0.
            await asyncio.sleep(-answer)
            answer = 200
        delivery.status = int(answer)
        return web.Response(status=delivery.status, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)  # any path: URL variants of one host
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await self._runner.setup()
        sock, self._sock = self._sock or _bound_socket(self.port), None
        await web.SockSite(self._runner, sock).start()  # the site closes it on cleanup

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def answered(self) -> dict[str, Delivery]:
        """Per webhook-id, the first delivery answered 2xx (what a deduplicating receiver
        keeps); a hang counts only if it ended before the relay gave up."""
        out: dict[str, Delivery] = {}
        for d in self.deliveries:
            if 200 <= d.status < 300:
                out.setdefault(d.headers.get("webhook-id", ""), d)
        return out

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


@dataclass
class DeadReceiver:
    """A receiver that is down but countable: it accepts each TCP connection and closes it at
    once, before reading anything (a crashed app behind a TCP proxy). The relay sees a
    connection error, as with a refused port; the test sees when each connection came."""

    port: int = field(default_factory=free_port)
    connections: list[float] = field(default_factory=list)
    _server: asyncio.Server | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOCALHOST}:{self.port}{path}"

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(time.time())
        writer.transport.abort()  # RST: nothing is answered

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOCALHOST, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def _bound_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop
    sock.bind((LOCALHOST, port))
    return sock
