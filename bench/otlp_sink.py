"""The benchmark's trace collector for ``python -m bench --tracing``, run as its own process:
``python -m bench.otlp_sink --port N``.

It takes OTLP/HTTP trace exports (``POST /v1/traces``) as a collector would, answers each with an
empty ``ExportTraceServiceResponse``, and counts them without decoding (a collector's own work
is not the relay's cost). ``GET /stats`` tells the driver how many exports and bytes came.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.devtools.processes import LOCALHOST, ManagedProcess, free_port, wait_for_port

TRACES_PATH = "/v1/traces"
READY_TIMEOUT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parent.parent


class TraceSinkProcess:
    """The sink as a child process of the driver, for the whole run (not stopped between phases,
    unlike the stack's children); ``relay_env`` turns tracing on in every relay."""

    def __init__(self, proc: ManagedProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls, workdir: Path) -> TraceSinkProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        argv = [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)]
        proc = ManagedProcess("otlp-sink", argv, workdir, env)
        proc.start()
        await wait_for_port(LOCALHOST, port, READY_TIMEOUT_S, proc)
        return cls(proc, port)

    def relay_env(self) -> dict[str, str]:
        """Tracing on with the SDK's defaults (batching, sampling: every span)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOCALHOST}:{self.port}"}

    async def stats(self) -> dict[str, Any]:
        url = f"http://{LOCALHOST}:{self.port}/stats"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            stats: dict[str, Any] = await resp.json()
        return stats

    def stop(self) -> None:
        self.proc.stop()


class Sink:
    """Counts exports; the answer is what the OTLP exporter expects (200, protobuf)."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.exports += 1
        self.bytes += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"exports": self.exports, "bytes": self.bytes})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(TRACES_PATH, self.export)
        app.router.add_get("/stats", self.stats)
        return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(Sink().app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
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
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
