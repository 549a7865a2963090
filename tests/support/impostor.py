"""A real HTTP server that is not MindVideo, for the wrong-base-URL tests: what a static site, a
redirecting front door or another API answers where the relay expects MindVideo. Switched to
``proxy_to`` a URL it forwards everything there (event streams included), as if the operator had
fixed the address behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from relay.devtools.processes import LOCALHOST, free_port

NGINX_405 = (
    b"<html><head><title>405 Not Allowed</title></head><body><center><h1>405 Not Allowed</h1>"
    b"</center><hr><center>nginx</center></body></html>"
)
HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/html"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Impostor:
    """``answers[(method, path)]`` (or ``answers[method]``) says what to answer; every request
    is recorded in ``seen`` as ``"METHOD /path"``."""

    url: str = ""
    answers: dict[object, Answer] = field(default_factory=dict)
    proxy_to: str | None = None
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path}")
        body = await request.read()
        if self.proxy_to is not None:
            return await self._forward(request, body)
        answer = self.answers.get((request.method, request.path)) or self.answers.get(
            request.method, Answer(404, b"<html>404 Not Found</html>")
        )
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={"Content-Type": answer.content_type, **answer.headers},
        )

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            session.request(
                request.method,
                f"{self.proxy_to}{request.path_qs}",
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream,
        ):
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@asynccontextmanager
async def running_impostor(port: int | None = None) -> AsyncIterator[Impostor]:
    """An ``Impostor`` listening on ``port`` (a free one when not given) until the block ends."""
    impostor = Impostor()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", impostor.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, LOCALHOST, port).start()
    impostor.url = f"http://{LOCALHOST}:{port}"
    try:
        yield impostor
    finally:
        await runner.cleanup()
